"""Twins and direct methods through tinyedge with the unchanged Azure IoT Python SDK.

argv: twin module connection string, caller module name, leaf device connection string, edge CA
file, data dir of the runtime, device id, IoT Hub hostname. The twin module and the leaf device
are made from connection strings; the caller with create_from_edge_environment (the SDK allows
invoke_method only there), signing through its workload API socket.
Protocol with the Rust test, one line each on stdout / stdin:
  the script prints "GOT {json}" after its first get_twin(), "PATCHED {json}" after patching
  reported properties and reading the twin again, "LEAF {json}" for the leaf device's twin, then
  "READY" once its method handler is set; it then reads commands from stdin:
  "desired" — wait for a desired-properties patch and print "DESIRED {json}";
  "invoke TARGET METHOD TIMEOUT" — the caller module invokes TARGET's METHOD through the hub's
  method HTTP API and prints "INVOKED {json}" or "INVOKE-ERROR {error}";
  "quit".
The twin module answers method "echo" with status 200 and the request payload, and never answers
method "silent".
"""
import json
import os
import sys
import threading

from lineout import out
from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, MethodResponse

twin_cs, caller_module, leaf_cs, ca_path, data_dir, device_id, hub = sys.argv[1:8]
with open(ca_path) as f:
    ca = f.read()




module = IoTHubModuleClient.create_from_connection_string(twin_cs, server_verification_cert=ca)
patches = []
patched = threading.Event()


def on_patch(patch):
    patches.append(patch)
    patched.set()


def on_method(request):
    if request.name == "echo":
        module.send_method_response(MethodResponse.create_from_method_request(request, 200, request.payload))
    # "silent": no answer, so the caller sees a 504.


module.connect()
out("GOT " + json.dumps(module.get_twin(), sort_keys=True))
module.patch_twin_reported_properties({"state": "ready", "count": 1, "nested": {"a": 1, "b": 2}})
module.patch_twin_reported_properties({"count": 2, "nested": {"b": None}})
out("PATCHED " + json.dumps(module.get_twin(), sort_keys=True))
module.on_twin_desired_properties_patch_received = on_patch
module.on_method_request_received = on_method

leaf = IoTHubDeviceClient.create_from_connection_string(leaf_cs, server_verification_cert=ca)
leaf.connect()
leaf.patch_twin_reported_properties({"battery": 87})
out("LEAF " + json.dumps(leaf.get_twin(), sort_keys=True))
leaf.shutdown()

os.environ.update({
    "IOTEDGE_IOTHUBHOSTNAME": hub,
    "IOTEDGE_DEVICEID": device_id,
    "IOTEDGE_MODULEID": caller_module,
    "IOTEDGE_GATEWAYHOSTNAME": "localhost",
    "IOTEDGE_MODULEGENERATIONID": "gen-1",
    "IOTEDGE_WORKLOADURI": "unix://%s/agent/workload/%s/workload.sock" % (data_dir, caller_module),
    "IOTEDGE_APIVERSION": "2022-08-03",
    "IOTEDGE_AUTHSCHEME": "sasToken",
})
caller = IoTHubModuleClient.create_from_edge_environment()
caller.connect()
caller.patch_twin_reported_properties({"calls": 0})
out("CALLER " + json.dumps(caller.get_twin(), sort_keys=True))
out("READY")

for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    if words[0] == "desired":
        if patched.wait(30):
            out("DESIRED " + json.dumps(patches[-1], sort_keys=True))
            patched.clear()
        else:
            out("DESIRED-TIMEOUT")
    elif words[0] == "invoke":
        target, method, timeout = words[1], words[2], int(words[3])
        params = {
            "methodName": method,
            "payload": {"hello": "world"},
            "responseTimeoutInSeconds": timeout,
            "connectTimeoutInSeconds": 0,
        }
        try:
            result = caller.invoke_method(params, device_id, module_id=target)
            out("INVOKED " + json.dumps(result, sort_keys=True))
        except Exception as error:  # the SDK maps HTTP errors to exceptions; the cause names the status
            cause = error.__cause__
            out("INVOKE-ERROR %s %s (%s: %s)" % (type(error).__name__, error, type(cause).__name__, cause))
    elif words[0] == "quit":
        break

caller.shutdown()
module.shutdown()

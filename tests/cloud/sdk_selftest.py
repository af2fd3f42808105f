"""The unchanged Azure IoT Python SDK against the scripted IoT Hub (tests/cloud_selftest.rs).

argv: leaf device connection string (HostName=localhost), the same device with a wrong key,
a module connection string naming the configured IoT Hub hostname with GatewayHostName=localhost,
the CA file that signed the hub's server certificate.
Protocol with the Rust test, one line each on stdout / stdin:
  "REFUSED <exception>"        the wrong key was refused at connect();
  "SENT"                       a telemetry message (message id, content type, one property) is sent;
  "TWIN {json}"                the first get_twin();
  "PATCHED {json}"             get_twin() after two reported patches (the second deletes a key);
  "MODULE {json}"              the module's get_twin(), connected through GatewayHostName;
  "READY"                      desired, method and C2D handlers are set (the SDK subscribed);
then, on its own: "DESIRED {json}" for each desired patch, "METHOD {name} {json}" for each
method request (answered: "echo" with 200 and the payload, "fail" with 500, others never),
"C2D {json}" for each cloud-to-device message; stdin "quit" ends it.
"""
import json
import sys
import os

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))
from lineout import out  # noqa: E402
from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, Message, MethodResponse

device_cs, wrong_cs, module_cs, ca_path = sys.argv[1:5]
with open(ca_path) as f:
    ca = f.read()




wrong = IoTHubDeviceClient.create_from_connection_string(wrong_cs, server_verification_cert=ca,
                                                         connection_retry=False)
try:
    wrong.connect()
    out("REFUSED none: connected")
except Exception as e:  # CredentialError from the SDK
    out(f"REFUSED {type(e).__name__}")
finally:
    wrong.shutdown()

device = IoTHubDeviceClient.create_from_connection_string(device_cs, server_verification_cert=ca)
device.connect()
message = Message('{"temperature": 21.5}', message_id="m-1", content_encoding="utf-8",
                  content_type="application/json")
message.custom_properties["kind"] = "reading"
device.send_message(message)
out("SENT")
out("TWIN " + json.dumps(device.get_twin(), sort_keys=True))
device.patch_twin_reported_properties({"battery": 87, "firmware": {"version": "1.0", "channel": "beta"}})
device.patch_twin_reported_properties({"firmware": {"channel": None}})
out("PATCHED " + json.dumps(device.get_twin(), sort_keys=True))

module = IoTHubModuleClient.create_from_connection_string(module_cs, server_verification_cert=ca)
module.connect()
out("MODULE " + json.dumps(module.get_twin(), sort_keys=True))
module.shutdown()


def on_desired(patch):
    out("DESIRED " + json.dumps(patch, sort_keys=True))


def on_method(request):
    out(f"METHOD {request.name} " + json.dumps(request.payload, sort_keys=True))
    if request.name == "echo":
        device.send_method_response(MethodResponse.create_from_method_request(request, 200, request.payload))
    elif request.name == "fail":
        device.send_method_response(MethodResponse.create_from_method_request(request, 500, {"error": "no"}))


def on_message(msg):
    out("C2D " + json.dumps({"data": msg.data.decode(), "message_id": msg.message_id,
                             "custom_properties": msg.custom_properties}, sort_keys=True))


device.on_twin_desired_properties_patch_received = on_desired
device.on_method_request_received = on_method
device.on_message_received = on_message
out("READY")
for line in sys.stdin:
    if line.strip() == "quit":
        break
device.shutdown()
out("BYE")

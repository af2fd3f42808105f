"""One client of tinyedge, on the unchanged Azure IoT Python SDK, driven line by line by a Rust
test of the cloud side (tests/cloud_side.rs).

argv: "module" or "device", its connection string (GatewayHostName=localhost), the edge CA file.
It connects, sets its handlers and prints "READY". Events, one line each on stdout:
  "DESIRED {json}"  a desired-properties patch arrived;
  "METHOD name {json}" a direct method call arrived (answered 200 with the payload, unless the
                     name is "silent", which is never answered);
  "C2D {json}"      a cloud-to-device message arrived: {"data": text, "properties": {...}};
  "INPUT {json}"    a module input message arrived: {"input", "data", "properties",
                     "message_id", "content_type"}.
Commands on stdin:
  "get"             print "TWIN {json}";
  "report {json}"   patch the reported properties, print "REPORTED";
  "send {text}"     send telemetry, print "SENT";
  "quit".
"""
import json
import sys

from lineout import out
from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, MethodResponse

kind, connection_string, ca_path = sys.argv[1:4]
with open(ca_path) as f:
    ca = f.read()




factory = IoTHubModuleClient if kind == "module" else IoTHubDeviceClient
client = factory.create_from_connection_string(connection_string, server_verification_cert=ca)


def on_patch(patch):
    out("DESIRED " + json.dumps(patch, sort_keys=True))


def on_method(request):
    out("METHOD %s %s" % (request.name, json.dumps(request.payload, sort_keys=True)))
    if request.name != "silent":
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, request.payload))


def on_message(message):
    data = message.data.decode("utf-8") if isinstance(message.data, bytes) else str(message.data)
    if kind == "device":
        out("C2D " + json.dumps({"data": data, "properties": message.custom_properties}, sort_keys=True))
    else:
        out("INPUT " + json.dumps({
            "input": message.input_name, "data": data, "properties": message.custom_properties,
            "message_id": message.message_id, "content_type": message.content_type,
        }, sort_keys=True))


client.on_twin_desired_properties_patch_received = on_patch
client.on_method_request_received = on_method
client.on_message_received = on_message
client.connect()
out("READY")

for line in sys.stdin:
    command, _, argument = line.strip().partition(" ")
    if command == "get":
        out("TWIN " + json.dumps(client.get_twin(), sort_keys=True))
    elif command == "report":
        client.patch_twin_reported_properties(json.loads(argument))
        out("REPORTED")
    elif command == "send":
        client.send_message(argument)
        out("SENT")
    elif command == "quit":
        break
client.shutdown()
out("BYE")

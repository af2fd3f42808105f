"""Two Azure IoT Python SDK module clients (azure-iot-device, unchanged) talk through tinyedge.

argv: sender connection string, receiver connection string, edge CA file.
The SDK connects to GatewayHostName:8883 over TLS, authenticates with a SAS token it signs from
the connection string's key, sends on an output and receives on an input, exactly as it does
against Azure IoT Edge's edgeHub. Prints one line describing the received message.
"""
import sys
import threading

from azure.iot.device import IoTHubModuleClient, Message

sender_cs, receiver_cs, ca_path = sys.argv[1:4]
with open(ca_path) as f:
    ca = f.read()

received = []
got = threading.Event()


def on_message(message):
    received.append(message)
    got.set()


receiver = IoTHubModuleClient.create_from_connection_string(receiver_cs, server_verification_cert=ca)
receiver.on_message_received = on_message
receiver.connect()

sender = IoTHubModuleClient.create_from_connection_string(sender_cs, server_verification_cert=ca)
sender.connect()
message = Message('{"temperature": 42.5}', message_id="sdk-1", content_encoding="utf-8", content_type="application/json")
message.custom_properties["alert"] = "yes"
sender.send_message_to_output(message, "out1")

if not got.wait(30):
    print("TIMEOUT: nothing received")
    sys.exit(1)
m = received[0]
print(
    "input=%s body=%s message_id=%s content_type=%s alert=%s"
    % (m.input_name, m.data.decode(), m.message_id, m.content_type, m.custom_properties.get("alert"))
)
sender.shutdown()
receiver.shutdown()

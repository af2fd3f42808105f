"""Two Azure IoT Python SDK module clients made with create_from_edge_environment (unchanged),
as modules deployed by IoT Edge make them: from the IOTEDGE_* variables, signing their SAS
tokens through the workload API socket and trusting the hub with its trust bundle.

argv: data dir of tinyedge, IoT Hub hostname, device id.
Each client gets the environment edgeAgent would give it; the workload socket is the module's
own ({data}/agent/workload/{module}/workload.sock). Prints one line describing the message the
receiver got through the route.
"""
import os
import sys
import threading

from azure.iot.device import IoTHubModuleClient, Message

data_dir, hub, device = sys.argv[1:4]


def client(module):
    os.environ.update({
        "IOTEDGE_IOTHUBHOSTNAME": hub,
        "IOTEDGE_DEVICEID": device,
        "IOTEDGE_MODULEID": module,
        "IOTEDGE_GATEWAYHOSTNAME": "localhost",
        "IOTEDGE_MODULEGENERATIONID": "gen-1",
        "IOTEDGE_WORKLOADURI": "unix://%s/agent/workload/%s/workload.sock" % (data_dir, module),
        "IOTEDGE_APIVERSION": "2022-08-03",
        "IOTEDGE_AUTHSCHEME": "sasToken",
    })
    return IoTHubModuleClient.create_from_edge_environment()


received = []
got = threading.Event()


def on_message(message):
    received.append(message)
    got.set()


receiver = client("edgesink")
receiver.on_message_received = on_message
receiver.connect()
sender = client("edgesource")
sender.connect()
sender.send_message_to_output(Message('{"via": "workload"}', content_encoding="utf-8", content_type="application/json"), "out1")

if not got.wait(30):
    print("TIMEOUT: nothing received")
    sys.exit(1)
m = received[0]
print("input=%s body=%s" % (m.input_name, m.data.decode()))
sender.shutdown()
receiver.shutdown()

// An Azure IoT Node.js SDK client (azure-iot-device + azure-iot-device-amqp, unchanged) on the
// AMQP transport, driven by a line protocol for tests/amqp.rs.
//
// argv: connection string (a module's or a device's; GatewayHostName=localhost:PORT), edge CA file.
// stdin, one command a line:
//   output NAME BODY          sendOutputEvent(NAME, BODY) with messageId m-BODY, contentType
//                             application/json and property k=v; prints "sent" or "error ..."
//   event BODY                sendEvent(BODY) (a leaf device's telemetry); prints "sent"/"error ..."
//   inputs                    subscribe to module inputs; prints "ready"; then each as
//                             "input NAME BODY {properties}" (completed)
//   c2d                       receive C2D messages (a device); prints "ready"; then each as
//                             "c2d BODY {properties}" (completed)
//   twin                      getTwin(); prints "twin {desired, reported}" or "error ..."; then
//                             every desired update as "desired PATCH"
//   report JSON               the reported patch JSON; prints "reported" or "error ..."
//   method NAME               answers method NAME with 200 {"echo": payload}; each call
//                             prints "method NAME PAYLOAD"
//   quit
// prints "open" once connected, "error ..." when open fails (then exits 2).
'use strict';
const fs = require('fs');
const readline = require('readline');
const { ModuleClient, Client, Message } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');

const [cs, caPath] = process.argv.slice(2);
const ca = fs.readFileSync(caPath, 'utf8');
const isModule = /;ModuleId=/.test(cs);
const client = isModule ? ModuleClient.fromConnectionString(cs, Amqp) : Client.fromConnectionString(cs, Amqp);
const say = (line) => process.stdout.write(line + '\n');
let twinObject = null;

function message(body) {
  const m = new Message(body);
  m.messageId = 'm-' + body;
  m.contentType = 'application/json';
  m.contentEncoding = 'utf-8';
  m.properties.add('k', 'v');
  return m;
}

function done(err) {
  say(err ? 'error ' + (err.message || err) : 'sent');
}

client.setOptions({ ca }, (err) => {
  if (err) { say('error ' + err.message); process.exit(2); }
  client.open((err) => {
    if (err) { say('error ' + (err.message || err)); process.exit(2); }
    say('open');
    const rl = readline.createInterface({ input: process.stdin });
    rl.on('line', (line) => {
      const [cmd, ...rest] = line.split(' ');
      if (cmd === 'output') client.sendOutputEvent(rest[0], message(rest.slice(1).join(' ')), done);
      else if (cmd === 'event') client.sendEvent(message(rest.join(' ')), done);
      else if (cmd === 'inputs') {
        client.on('inputMessage', (input, msg) => {
          const props = {};
          for (let i = 0; i < msg.properties.count(); i++) {
            const item = msg.properties.getItem(i);
            props[item.key] = item.value;
          }
          props['$.mid'] = msg.messageId;
          props['$.ct'] = msg.contentType;
          say('input ' + input + ' ' + msg.getData().toString() + ' ' + JSON.stringify(props));
          client.complete(msg, () => {});
        });
        say('ready');
      } else if (cmd === 'c2d') {
        client.on('message', (msg) => {
          const props = {};
          for (let i = 0; i < msg.properties.count(); i++) {
            const item = msg.properties.getItem(i);
            props[item.key] = item.value;
          }
          props['$.mid'] = msg.messageId;
          say('c2d ' + msg.getData().toString() + ' ' + JSON.stringify(props));
          client.complete(msg, () => {});
        });
        say('ready');
      } else if (cmd === 'twin') {
        client.getTwin((err, twin) => {
          if (err) { say('error ' + (err.message || err)); return; }
          twinObject = twin;
          say('twin ' + JSON.stringify({ desired: twin.properties.desired, reported: twin.properties.reported }));
          twin.on('properties.desired', (delta) => say('desired ' + JSON.stringify(delta)));
        });
      } else if (cmd === 'report') {
        if (!twinObject) { say('error no twin yet'); return; }
        twinObject.properties.reported.update(JSON.parse(rest.join(' ')), (err) => say(err ? 'error ' + (err.message || err) : 'reported'));
      } else if (cmd === 'method') {
        const name = rest[0];
        client.onMethod(name, (request, response) => {
          say('method ' + name + ' ' + JSON.stringify(request.payload));
          response.send(200, { echo: request.payload }, (err) => { if (err) say('error ' + (err.message || err)); });
        });
        say('ready');
      } else if (cmd === 'quit') client.close(() => process.exit(0));
    });
    rl.on('close', () => client.close(() => process.exit(0)));
  });
});

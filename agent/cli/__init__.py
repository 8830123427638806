"""Every command-line front end: `faceagent` itself (`main`), the live loop (`live`), the operator's
remote control (`ctl`, over `operator`'s MQTT client) and the offline `demo`."""

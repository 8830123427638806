"""Every command-line front end: `faceagent` itself (`main`), the live loop (`live`), the operator's
remote control (`ctl`, over the link's operator client, `agent.link.operator`) and the offline `demo`."""

"""What the tests share besides fixtures (those live in the conftest.py files).

- `data`: paths to the repository's samples and to the real photos in ../shared/data, and which of them a
  test uses (the clip, its enrollment photos, Colin Powell's, the brick wall).
- `broker`: a real Mosquitto on a free 127.0.0.1 port, test-made certificates, an observing client.
- `commands`: a device's command side as the service wires it, and the test operator's command key.
- `model_updates`: that device with a `ModelUpdater`, and signed model releases for it.
- `agent_process`: `faceagent` as a process (CLI runs, `faceagent run`, the link alone), its config and env.
- `faults`: what the fault suite reads back after a kill (the outbox, integrity, what was delivered).
- `tmpfs`: a small tmpfs that really fills up.
- `compare`: small comparisons several test modules make (images, embeddings, files).
- `fakes/picamera2`: the one fake, at the hardware boundary (there is no Pi camera here).
"""

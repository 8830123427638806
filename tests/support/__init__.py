"""What the tests share besides fixtures (those live in the conftest.py files).

- `data`: paths to the repository's samples and to the real photos in ../shared/data, and which of them a
  test uses (the clip, its enrollment photos, Colin Powell's, the brick wall).
- `broker`: a real Mosquitto on a free 127.0.0.1 port, test-made certificates, an observing client.
- `commands`: a device's command side as the service wires it, and the test operator's command key.
- `model_updates`: that device with a `ModelUpdater`, and signed model releases for it.
- `agent_process`: `faceagent` as a process (CLI runs, `faceagent run`, the link alone), its config and env.
- `stage`: that process replaying the Hamilton clip with Lin-Manuel Miranda enrolled, for end-to-end tests.
- `console`: `faceagent console` as a process, and its password file.
- `faults`: what the fault suite reads back after a kill (the outbox, integrity, what was delivered).
- `tmpfs`: a small tmpfs that really fills up.
- `compare`: small comparisons several test modules make (images, embeddings, files).
- `factory`: fixture factories that close what they made.
- `markers`: the collection rule that keeps the fault suite out of `-m "not slow"`.
- `fakes/picamera2`: the one fake, at the hardware boundary (there is no Pi camera here).
"""

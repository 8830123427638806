"""Commands that arrive over MQTT: validated (`schema`), authorised (`signing`), run (`handlers`) and
answered once per request id (`dispatcher`).

Import the submodules directly. This package imports nothing, so `faceagent ctl` can use `schema` and
`signing` without loading the handlers (which reach the models, the gallery and enrollment).
"""

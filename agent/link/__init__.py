"""The MQTT link: topics, the broker connection, commands in and replies out (docs/design-mqtt.md)."""

from agent.link.mqtt import BrokerSettings, CommandRequest, MqttLink
from agent.link.topics import Topics, resolve_device_id

__all__ = ["BrokerSettings", "CommandRequest", "MqttLink", "Topics", "resolve_device_id"]

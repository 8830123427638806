"""The MQTT link: topics, the broker connection, commands in and replies out (`mqtt`), the events'
outbox, status and telemetry documents, and Home Assistant discovery."""

from agent.link.mqtt import BrokerSettings, CommandRequest, MqttLink
from agent.link.topics import Topics, resolve_device_id

__all__ = ["BrokerSettings", "CommandRequest", "MqttLink", "Topics", "resolve_device_id"]

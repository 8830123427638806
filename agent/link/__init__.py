"""The MQTT link: the one client factory and its TLS policy (`client`), topics, the device's connection with
commands in and replies out (`mqtt`), the events' outbox, status and telemetry documents, Home Assistant
discovery, and the operator's request/response client (`operator`). The documents' shapes: `agent.wire`."""

from agent.link.client import BrokerSettings
from agent.link.mqtt import CommandRequest, MqttLink
from agent.link.topics import Topics, resolve_device_id

__all__ = ["BrokerSettings", "CommandRequest", "MqttLink", "Topics", "resolve_device_id"]

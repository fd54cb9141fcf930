"""MQTT: events and commands on a broker, Home Assistant discovery, a durable outbox."""

from .bridge import InspectCommand, MqttBridge, SetCommand, StationControl, attach_mqtt
from .discovery import discovery_payload, discovery_topic
from .outbox import Outbox
from .topics import BrokerUrl, Topics, parse_broker_url

__all__ = [
    "BrokerUrl",
    "InspectCommand",
    "MqttBridge",
    "Outbox",
    "SetCommand",
    "StationControl",
    "Topics",
    "attach_mqtt",
    "discovery_payload",
    "discovery_topic",
    "parse_broker_url",
]

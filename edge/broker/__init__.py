"""The site's MQTT broker: amqtt embedded, with device authentication and topic ACL plugins."""

from edge.broker.embedded import EmbeddedBroker

__all__ = ["EmbeddedBroker"]

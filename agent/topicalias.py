"""MQTT 5 topic aliases for the box's own topics: a topic's name crosses the link once per connection.

The first PUBLISH on a topic carries its name and a new alias; every later one carries the alias alone
(an empty topic and a 3-byte property instead of ~30 bytes of `boxtel/<id>/locker/<name>`). The broker
says in CONNACK how many aliases it keeps (`TopicAliasMaximum`, mosquitto's `max_topic_alias`, 10 by
default); none offered means none used. Aliases live and die with one network connection (MQTT 5
§3.3.2.3.4), so a new map is made for every connection; topics beyond the maximum go by name.
"""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class TopicAliases:
    def __init__(self, maximum: int):
        self.maximum = max(0, min(int(maximum or 0), 65535))
        self._aliases: dict[str, int] = {}

    def publish_args(self, topic: str) -> tuple[str, Properties | None]:
        """(topic, properties) to hand paho's publish() for `topic` on this connection."""
        alias = self._aliases.get(topic)
        if alias is not None:
            return "", _alias_properties(alias)
        if len(self._aliases) >= self.maximum:
            return topic, None
        alias = len(self._aliases) + 1
        self._aliases[topic] = alias
        return topic, _alias_properties(alias)  # name and alias: the broker learns the mapping


def _alias_properties(alias: int) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    properties.TopicAlias = alias
    return properties

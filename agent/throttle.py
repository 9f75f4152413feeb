"""Per-stream rate limiting: deadband, minimum interval and maximum interval.

The core decides what a reading is worth sending, so drivers can report at their natural rate:
- a numeric field counts as changed only when it moved more than its deadband from what was last sent
  (comparing with the last *sent* value, so slow drift still gets through);
- a change inside `min_interval_s` of the last send is held and sent when the interval ends (the latest
  value wins), so a flapping input cannot flood the link but its final state is never lost;
- an unchanged stream is re-sent every `max_interval_s` (an hour by default: the topic is retained, so
  a late subscriber is never blind; the re-send only refreshes `ts` for the fleet's "last seen");
- a field whose deadband is `inf` is never a reason to send on its own, whatever its type: it rides
  along with the next send (an uptime, an age, a sentence counter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.schema import SettingError, setting

INF = float("inf")


@dataclass(kw_only=True)
class StreamSettings:
    """Keys every reading stream's section accepts (a driver may override the defaults)."""

    min_interval_s: float = setting(1.0, min=0.0, max=3600.0, doc="never publish this stream more often")
    max_interval_s: float = setting(
        3600.0, min=1.0, max=86400.0, doc="re-send an unchanged value this often"
    )
    # A stream names its numeric fields in `keys` (none here: a key no stream sends is a typo). inf is
    # "never a reason to send on its own"; it hides no alarm: an alarm change is always sent.
    deadband: dict[str, float] = setting(
        {}, min=0.0, inf_ok=True, keys=(), doc="per field: change smaller than this is no change, e.g. { cpu_pct = 5 }"
    )

    def validate(self) -> None:
        if self.min_interval_s > self.max_interval_s:
            raise SettingError("min_interval_s", "must not be larger than max_interval_s")


class StreamThrottle:
    def __init__(self, settings: StreamSettings):
        self.min_interval_s = settings.min_interval_s
        self.max_interval_s = settings.max_interval_s
        self.deadband = dict(settings.deadband)
        self.latest: dict[str, Any] | None = None  # last offered, sent or not
        self._sent: dict[str, Any] | None = None
        self._sent_mono = 0.0
        self._held = False  # `latest` is a change waiting for min_interval to pass

    def offer(self, values: dict[str, Any], mono: float, force: bool = False) -> dict[str, Any] | None:
        """Values to send now, or None (suppressed, or held until `next_due()`).

        `force` (an alarm changed) sends at once, past deadband and minimum interval."""
        self.latest = values
        if self._sent is None:
            return self._send(mono)
        if force:
            return self._send(mono)
        if not self._changed(values):
            self._held = False
            return self._send(mono) if mono - self._sent_mono >= self.max_interval_s else None
        if mono - self._sent_mono < self.min_interval_s:
            self._held = True
            return None
        return self._send(mono)

    def due(self, mono: float) -> dict[str, Any] | None:
        """Called when `next_due()` has passed: the held change, or the max-interval re-send."""
        if self.latest is None or mono < self.next_due():
            return None
        return self._send(mono)

    def resend(self, mono: float) -> dict[str, Any] | None:
        """The latest values, marked sent now (on reconnect, the current state goes out first)."""
        if self.latest is None:
            return None
        return self._send(mono)

    def next_due(self) -> float:
        if self.latest is None:
            return float("inf")
        if self._held:
            return self._sent_mono + self.min_interval_s
        return self._sent_mono + self.max_interval_s

    def _send(self, mono: float) -> dict[str, Any]:
        self._sent = self.latest
        self._sent_mono = mono
        self._held = False
        return self.latest

    def differs(self, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """Whether `new` is a change from `old` under this stream's deadbands."""
        return self._changed(new, old)

    def _changed(self, values: dict[str, Any], sent: dict[str, Any] | None = None) -> bool:
        sent = self._sent if sent is None else sent
        if values.keys() != sent.keys():
            return True
        for name, value in values.items():
            old = sent[name]
            if self.deadband.get(name) == INF:
                continue
            if _is_number(value) and _is_number(old):
                if abs(value - old) > self.deadband.get(name, 0.0):
                    return True
            elif value != old:
                return True
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

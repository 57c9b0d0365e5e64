"""Deterministic sampling: a keyed hash against the rate, plus per-segment minimum quotas.

The hash is blake2b(salt, key) read as a 64-bit fraction, so a re-run samples exactly the same
requests, and a user/session key gives sticky sampling. When the key is the Kafka record key or
a header, the decision is made before the value is decoded (decoding is the costliest step).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from schemas.config import SamplingSpec

RATE = "rate"
QUOTA = "quota"
_SCALE = float(1 << 64)
_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


class Sampler:
    def __init__(self, spec: SamplingSpec, already_sampled: Mapping[str, int] | None = None) -> None:
        self._threshold = int(spec.rate * _SCALE) if spec.rate < 1.0 else None
        self._salt = spec.salt.encode()[:16]  # blake2b takes a salt of at most 16 bytes
        kind, _, name = spec.key.partition(":")
        self.key_kind = kind  # request_id | kafka_key | header | field
        self.key_name = name
        self._quota_left = {q: max(0, n - (already_sampled or {}).get(q, 0)) for q, n in spec.quotas.items()}

    @property
    def threshold(self) -> int | None:
        """Hashes below this (as 64-bit integers) are sampled; None samples everything."""
        return self._threshold

    @property
    def salt(self) -> bytes:
        return self._salt

    @property
    def decides_before_decoding(self) -> bool:
        return self.key_kind in ("kafka_key", "header")

    @property
    def quotas_open(self) -> bool:
        """True while some segment still needs quota samples (then unsampled messages are
        decoded to learn their segment)."""
        return any(v > 0 for v in self._quota_left.values())

    def hit(self, key: bytes) -> bool:
        """True when `key` falls under the rate."""
        if self._threshold is None:
            return True
        return _from_bytes(_blake2b(key, digest_size=8, salt=self._salt).digest(), "big") < self._threshold

    def raw_key(self, msg: Any) -> bytes | None:
        # any record with .key and .headers: a ConsumerRecord, a FileRecord or a RawMessage
        """The sampling key read without decoding, or None when the value must be decoded."""
        if self.key_kind == "kafka_key":
            return msg.key if msg.key is not None else b""
        if self.key_kind == "header":
            for k, v in msg.headers:
                if k == self.key_name:
                    return v or b""
            return b""
        return None

    def take_quota(self, segments: Mapping[str, str | None]) -> bool:
        """Spend one quota slot if this request's segment still needs samples."""
        for q, left in self._quota_left.items():
            if left <= 0:
                continue
            field, _, value = q.partition("=")
            if segments.get(field) == value:
                self._quota_left[q] = left - 1
                return True
        return False

    def count_rate_sample(self, segments: Mapping[str, str | None]) -> None:
        """Rate samples also fill quotas: the quota is a minimum, not an extra."""
        for q, left in self._quota_left.items():
            if left > 0:
                field, _, value = q.partition("=")
                if segments.get(field) == value:
                    self._quota_left[q] = left - 1

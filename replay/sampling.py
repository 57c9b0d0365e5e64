"""Deterministic sampling: a keyed hash against the rate, plus per-segment minimum quotas.

The hash is blake2b(salt, key) read as a 64-bit fraction, so a re-run samples exactly the same
requests, and a user/session key gives sticky sampling. When the key is the Kafka record key or
a header, the decision is made before the value is decoded (decoding is the costliest step).

A quota of k for a segment is a bottom-k sample: the k requests of that segment with the
smallest hashes among all its traffic, wherever they fall in the window (filling a quota with
the first k requests sampled the start of a window only, and hid a regression that grew over
time). While reading, a request is stored when its hash is below the segment's current k-th
smallest; one pushed out later stays stored, and the judge keeps the k smallest of all
(`quota_samples` holds their hashes). Rate samples have the smallest hashes of all (below the
rate), so they count towards k, and the kept set is every request of the segment with a hash
below one threshold: a uniform sample of the segment.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from shadowdiff.schemas.config import SamplingSpec

RATE = "rate"
QUOTA = "quota"
_SCALE = float(1 << 64)
# quotas opened per field by `min_per_segment`: a field with more values (an id by mistake)
# would hold k hashes for each; the judge pools all but its max_segment_values commonest
MAX_VALUES_PER_FIELD = 1000
_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


class Sampler:
    def __init__(
        self,
        spec: SamplingSpec,
        quota_state: Mapping[str, tuple[int, list[int]]] | None = None,
        segment_fields: Sequence[str] = (),
        per_segment_k: int = 0,
    ) -> None:
        """`quota_state`: per quota, the rate samples and the quota samples' hashes already
        stored (a restarted worker resumes its bottom-k where it was). `per_segment_k` > 0 gives
        every value of each of `segment_fields` a quota of that size, opened when the value is
        first seen (`SamplingSpec.min_per_segment`)."""
        self._threshold = int(spec.rate * _SCALE) if spec.rate < 1.0 else None
        self._salt = spec.salt.encode()[:16]  # blake2b takes a salt of at most 16 bytes
        kind, _, name = spec.key.partition(":")
        self.key_kind = kind  # request_id | kafka_key | header | field
        self.key_name = name
        self._quota_k = dict(spec.quotas)
        self._quota_field = {q: q.partition("=")[0] for q in spec.quotas}
        self._quota_value = {q: q.partition("=")[2] for q in spec.quotas}
        self._every_value = tuple(segment_fields) if per_segment_k > 0 else ()
        self._every_value_k = per_segment_k
        self._values_opened: Counter[str] = Counter()
        # per quota, a max-heap (negated) of the k smallest hashes seen; a rate sample enters
        # as 0 (below every non-sampled hash, which is all that matters for the threshold)
        self._bottom: dict[str, list[int]] = {}
        self._state = dict(quota_state or {})
        for q in self._quota_k:
            self._open(q)
        for q in self._state:
            if (field := q.partition("=")[0]) in self._every_value and q not in self._bottom:
                self._values_opened[field] += 1
                self._open(q)

    def _open(self, q: str) -> list[int]:
        k = self._quota_k.setdefault(q, self._every_value_k)
        n_rate, hashes = self._state.get(q, (0, []))
        heap = [0] * min(n_rate, k) + [-h for h in sorted(hashes)[: max(0, k - n_rate)]]
        heapq.heapify(heap)
        self._bottom[q] = heap
        return heap

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
        """True when the run has quotas: every message's segment must then be known (a request
        of a quota segment is stored when its hash is among the segment's k smallest so far)."""
        return bool(self._quota_k) or bool(self._every_value)

    def hash_of(self, key: bytes) -> int:
        return _from_bytes(_blake2b(key, digest_size=8, salt=self._salt).digest(), "big")

    def quota_may_take(self, h: int) -> bool:
        """False when a message with hash `h` cannot enter any quota (every quota holds k hashes
        below it): it need not be decoded."""
        if self._every_value:
            return True  # the message may be of a segment value not seen yet, whose quota is empty
        return any(len(heap) < self._quota_k[q] or h < -heap[0] for q, heap in self._bottom.items())

    def hit(self, key: bytes) -> bool:
        """True when `key` falls under the rate."""
        if self._threshold is None:
            return True
        return self.hash_of(key) < self._threshold

    def hit_hash(self, h: int) -> bool:
        return self._threshold is None or h < self._threshold

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

    def _quotas_of(self, segments: Mapping[str, str | None]) -> list[str]:
        named = [q for q in self._quota_field if segments.get(self._quota_field[q]) == self._quota_value[q]]
        for field in self._every_value:
            value = segments.get(field)
            if value is not None and (q := f"{field}={value}") not in self._quota_field:
                if q not in self._bottom:
                    if self._values_opened[field] >= MAX_VALUES_PER_FIELD:
                        continue  # a field with this many values is pooled by the judge anyway
                    self._values_opened[field] += 1
                    self._open(q)
                named.append(q)
        return named

    def take_quota(self, segments: Mapping[str, str | None], h: int) -> list[str]:
        """The quotas this request (not a rate sample) enters: those of its segments whose k
        smallest hashes so far it belongs to. Empty: it is not stored."""
        entered = []
        for q in self._quotas_of(segments):
            heap = self._bottom[q]
            if len(heap) < self._quota_k[q]:
                heapq.heappush(heap, -h)
            elif h < -heap[0]:
                heapq.heapreplace(heap, -h)
            else:
                continue
            entered.append(q)
        return entered

    def count_rate_sample(self, segments: Mapping[str, str | None]) -> None:
        """Rate samples count towards quotas: the quota is a minimum, not an extra."""
        for q in self._quotas_of(segments):
            heap = self._bottom[q]
            if len(heap) < self._quota_k[q]:
                heapq.heappush(heap, 0)
            elif -heap[0] > 0:
                heapq.heapreplace(heap, 0)

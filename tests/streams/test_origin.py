"""Origins: however often fragments are delivered again, each is applied once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.origin import add_origin, covers, decode_origins, origin, pack_origins

# Per input partition, offsets arrive in order; copies replay a suffix of what was applied.
deliveries = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 30), st.integers(0, 3)), max_size=40
)


@given(deliveries)
def test_each_origin_is_applied_once(plan: list[tuple[int, int, int]]) -> None:
    applied: list[int] = []
    state = b""
    next_offset = {p: 0 for p in range(4)}
    for partition, steps, replay in plan:
        start = next_offset[partition]
        new = list(range(start, start + steps % 4))
        copies = list(range(max(0, start - replay), start))
        for offset in copies + new:
            fragment = origin(partition, offset)
            if not covers(state, fragment):
                state = add_origin(state, fragment)
                applied.append(fragment)
        next_offset[partition] = start + len(new)
    assert len(applied) == len(set(applied)) == sum(next_offset.values())


def test_header_round_trip() -> None:
    origins = [origin(0, 5), origin(65535, 2**47)]
    assert decode_origins(pack_origins(origins), 2) == origins

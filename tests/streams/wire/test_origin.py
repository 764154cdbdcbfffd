"""Origins: however often fragments are delivered again, each is applied once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.wire.origin import add_origin, covers, decode_origins, origin, pack_origins

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


def test_parts_of_one_input_record_are_distinct_and_ordered() -> None:
    applied = add_origin(b"", origin(1, 9, 0))
    assert not covers(applied, origin(1, 9, 1))
    applied = add_origin(applied, origin(1, 9, 1))
    assert covers(applied, origin(1, 9, 0)) and covers(applied, origin(1, 8, 7))
    assert not covers(applied, origin(1, 10, 0))


def test_headers_of_the_previous_release_are_read() -> None:
    legacy = (3 << 48 | 41).to_bytes(8, "big")
    assert decode_origins(legacy, 1) == [origin(3, 41)]

"""The synthetic rows and the renaming of scripts/copy_probe.py (the reading diagnosis of the WebSailor default)."""

import random

from scripts.copy_probe import anonymize, copy_rows


def _distances(rows):
    """For each row, the distances back at which every loss position's token also stands."""
    out = []
    for ids, mask in rows:
        spots = [p for p in range(len(ids)) if mask[p]]
        out.append({d for d in range(1, len(ids)) if all(p >= d and ids[p - d] == ids[p] for p in spots)})
    return out


def test_fixed_rows_repeat_at_one_distance_and_varied_rows_do_not():
    vocab = list(range(10, 3000))
    fixed = copy_rows(random.Random(0), vocab, 20, 30)
    assert all(len(ids) == 60 and sum(mask) == 29 for ids, mask in fixed)
    assert all(30 in d for d in _distances(fixed))  # one head looking 30 back solves every row
    varied = copy_rows(random.Random(0), vocab, 20, 30, varied=True)
    assert all(len(ids) == 60 and sum(mask) >= 7 for ids, mask in varied)
    common = set.intersection(*_distances(varied))
    assert not common  # no single distance back solves every row: the repeat must be found by content
    spaced = copy_rows(random.Random(0), vocab, 3, 30, space=5, varied=True)
    for ids, mask in spaced:
        assert len(ids) == 120 and ids[1::2] == [5] * 60
        assert all(mask[p] == mask[p + 1] for p in range(0, 120, 2))  # a word and its space alike


def test_anonymize_renames_names_consistently_and_nothing_else():
    pool = list(range(100, 200))
    ids = [1, 100, 2, 101, 100, 3, 150, 101]
    out = anonymize(random.Random(0), pool, ids)
    assert [out[i] for i in (0, 2, 5)] == [1, 2, 3]  # template tokens untouched
    assert out[1] == out[4] and out[3] == out[7]  # the same name, the same new name
    assert len({out[1], out[3], out[6]}) == 3 and {out[1], out[3], out[6]} <= set(pool)
    assert out != ids or anonymize(random.Random(1), pool, ids) != ids

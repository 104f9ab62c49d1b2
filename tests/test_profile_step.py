"""The step profiler's concurrency accounting (bench/profile_step.py): which op ran alone, and for how long."""
from bench.profile_step import concurrency, op_kinds


def _event(name, ts, dur, tid):
    return {'name': name, 'ts': ts, 'dur': dur, 'tid': tid, 'ph': 'X'}


def test_concurrency_counts_the_time_each_op_runs_alone():
    # thread 1: a [0, 10); thread 2: b [4, 6), then c [10, 13) after a gap [6, 10) where a runs alone
    events = [_event('fusion.1', 0, 10, 1), _event('fusion.2', 4, 2, 2), _event('copy.3', 10, 3, 2),
              _event('fusion.4', 15, 1, 1)]
    alone, cover = concurrency(events)
    assert alone == [8, 0, 3, 1]  # a: [0,4) and [6,10); c ends before fusion.4 starts
    assert cover == {1: 12, 2: 2, 0: 2}  # [13, 15) nothing runs


def test_op_kinds_sums_alone_time_per_kind():
    events = [_event('fusion.1', 0, 10, 1), _event('fusion.2', 4, 2, 2), _event('copy.3', 10, 3, 2)]
    us, alone, n = op_kinds(events)
    assert us == {'fusion': 12, 'copy': 3} and alone == {'fusion': 8, 'copy': 3} and n == {'fusion': 2, 'copy': 1}

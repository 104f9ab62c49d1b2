"""The step profiler's accounting (bench/profile_step.py): per-kind times, and which loop fusions run on one thread."""
from bench.profile_step import op_kinds, unsplit_loop_fusions

HLO = '''
  %add_dynamic-update-slice_fusion.3 = f32[2,64,8,8,4]{4,3,2,1,0} fusion(%p0, %p1), kind=kLoop, calls=%fc.3
  %add_add_fusion.1 = f32[64,8,8,4]{3,2,1,0} fusion(%p2), kind=kLoop, calls=%fc.1, backend_config={"outer_dimension_partitions":["2"]}
  ROOT %ynn_fusion.7 = f32[1,4]{1,0} fusion(%p3, %p4), kind=kCustom, calls=%fc.7
'''


def _event(name, dur):
    return {'name': name, 'ts': 0, 'dur': dur, 'tid': 1, 'ph': 'X'}


def test_unsplit_loop_fusions_are_the_loop_fusions_without_partitions():
    assert unsplit_loop_fusions(HLO) == {'add_dynamic-update-slice_fusion.3'}


def test_op_kinds_sums_time_and_one_thread_time_per_kind():
    events = [_event('add_dynamic-update-slice_fusion.3', 10), _event('add_dynamic-update-slice_fusion.3', 5),
              _event('add_add_fusion.1', 7), _event('ynn_fusion.7', 2)]
    us, one_thread, n = op_kinds(events, unsplit=unsplit_loop_fusions(HLO))
    assert us == {'add_dynamic-update-slice_fusion': 15, 'add_add_fusion': 7, 'ynn_fusion': 2}
    assert one_thread == {'add_dynamic-update-slice_fusion': 15, 'add_add_fusion': 0, 'ynn_fusion': 0}
    assert n == {'add_dynamic-update-slice_fusion': 2, 'add_add_fusion': 1, 'ynn_fusion': 1}

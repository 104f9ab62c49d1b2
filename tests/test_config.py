import importlib.util
import os
import subprocess
import sys

import pytest

from asose_jax.run.config import ConfigError, network_spec, search_step_config, validate

ROOT = os.path.join(os.path.dirname(__file__), '..')


def _load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


@pytest.mark.parametrize('name, arg', [('cifar10', None), ('cifar10', 'smoke'), ('cifar100', None),
                                       ('cifar100', 'smoke'), ('nb201', None), ('nb201', 'smoke')])
def test_configs_validate_and_grow_on_plateau(name, arg):
    """Every search config runs the four ASO-SE phases: warmup, search growing on a plateau, optimize."""
    c = _load(name, arg)
    validate(c)
    assert network_spec(c).num_classes == (100 if name == 'cifar100' else 10)
    assert c.monitor.on_plateau == 'grow' and c.growth.max_growths >= 1, (c.monitor, c.growth)
    assert c.search.search_epochs > c.monitor.plateau_patience + 1  # a plateau can be seen and grown out of
    assert c.optimize.epochs > 0 and (c.search.warmup_epochs > 0 or name == 'nb201' and arg is None)


def test_defaults_follow_darts():
    c = _load('cifar10')
    assert (c.model.C, c.model.layers, c.search.batch_size, c.data.train_portion) == (16, 8, 64, 0.5)
    assert (c.weight_optim.lr, c.weight_optim.lr_min, c.weight_optim.momentum) == (0.025, 0.001, 0.9)
    assert (c.weight_optim.weight_decay, c.weight_optim.grad_clip) == (3e-4, 5.0)
    assert (c.arch_optim.lr, c.arch_optim.b1, c.arch_optim.b2, c.arch_optim.weight_decay) == (3e-4, 0.5, 0.999, 1e-3)


def test_unknown_variant():
    with pytest.raises(ValueError, match='smoke'):
        _load('cifar10', 'huge')


@pytest.mark.parametrize('field, value, fragment', [
    ('data.source', 'imagenet', "allowed: ('download', 'cifar_dir', 'tfds', 'synthetic')"),
    ('data.dataset', 'mnist', 'data.dataset'),
    ('data.train_portion', 1.0, 'data.train_portion'),
    ('model.C', 7, 'model.C'),
    ('model.primitives', ['none', 'conv_9x9'], 'model.primitives'),
    ('model.primitives', ['none'], 'other than'),
    ('model.pointwise_impl', 'matmul', 'model.pointwise_impl'),
    ('search.arch_every', 0, 'search.arch_every'),
    ('search.tau_schedule', 'cosine', 'search.tau_schedule'),
    ('search.eval_mode', 'mean', 'search.eval_mode'),
    ('weight_optim.momentum', 1.5, 'weight_optim.momentum'),
    ('optimize.drop_path', 1.0, 'optimize.drop_path'),
])
def test_bad_values_name_the_field(field, value, fragment):
    c = _load('cifar10', 'smoke')
    section, key = field.split('.')
    c[section][key] = value
    with pytest.raises(ConfigError, match=fragment.replace('(', r'\(').replace(')', r'\)')):
        validate(c)


def test_single_path_needs_hard():
    c = _load('cifar10', 'smoke')
    c.search.sampling, c.search.single_path, c.search.hard = 'gumbel', True, False
    with pytest.raises(ConfigError, match='search.single_path'):
        validate(c)


def test_model_fast_paths_reach_the_search_steps():
    """The config's execution options (none of them change parameters) end up in the step config."""
    c = _load('cifar10', 'smoke')
    c.model.pointwise_impl, c.model.remat_branch, c.model.depthwise_impl = 'dot', True, 'shift'
    c.model.unroll_edges, c.model.materialize_edge_grads = True, True
    validate(c)
    s = search_step_config(c, 'search', 10)
    assert (s.pointwise_impl, s.remat_branch, s.depthwise_impl, s.unroll_edges, s.materialize_edge_grads) == (
        'dot', True, 'shift', True, True)


def test_execution_form_is_chosen_unless_given():
    """'auto'/None execution fields take asose_jax/search/execution.py's choice for the backend and compile mode
    (the CPU recipe when XLA optimises, the plain forms when it does not, `shift` on accelerators); a
    value given in the config wins."""
    from asose_jax.search import execution
    from asose_jax.search.compilation import fast_compile
    c = _load('cifar10', 'smoke')
    assert c.model.depthwise_impl == 'auto' and c.model.remat_branch is None
    assert execution.resolve(c.model, backend='cpu', optimized=True) == execution.CPU_RECIPE
    assert execution.resolve(c.model, backend='cpu', optimized=False) == execution.PLAIN
    assert execution.resolve(c.model, fast_compile=True, backend='cpu') == execution.PLAIN
    nb201 = _load('nb201', 'smoke').model
    assert execution.resolve(nb201, backend='cpu', optimized=True) == execution.NB201_CPU
    gpu = execution.resolve(c.model, backend='gpu', optimized=True)
    assert (gpu['depthwise_impl'], gpu['pointwise_impl'], gpu['remat_branch']) == ('shift', 'conv', False)
    c.model.remat_branch, c.model.pointwise_impl = False, 'conv'
    form = execution.resolve(c.model, backend='cpu', optimized=True)
    assert (form['remat_branch'], form['pointwise_impl'], form['depthwise_impl']) == (False, 'conv', 'shift')
    with fast_compile():  # what the tests' and the rarely run programs' compiles are
        assert execution.resolve(c.model, backend='cpu')['depthwise_impl'] == 'conv'


def test_execution_override_parses_on_the_command_line():
    """`--config.model.remat_branch=True` on a field that defaults to None (chosen) is a bool override."""
    argv = ['x', '--config', 'configs/cifar10.py:smoke', '--config.model.remat_branch=True',
            '--config.model.depthwise_impl=conv']
    r = subprocess.run([sys.executable, '-c', (
        'import sys; from absl import flags; from ml_collections import config_flags; '
        f"c = config_flags.DEFINE_config_file('config'); sys.argv = {argv!r}; flags.FLAGS(sys.argv); "
        'print(repr(c.value.model.remat_branch), c.value.model.depthwise_impl, repr(c.value.model.unroll_edges))')],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ['True', 'conv', 'None'], r.stdout


def test_cifar100_smoke_downloads_a_subset_sized_split():
    """No CIFAR-100 subset is bundled: its smoke variant reads the downloaded archive, cut to the
    CIFAR-10 subset's size, instead of pointing at the CIFAR-10 folder."""
    c = _load('cifar100', 'smoke')
    assert (c.data.source, c.data.dir, c.data.max_train, c.data.max_test) == ('download', '', 4068, 1017)
    assert _load('cifar10', 'smoke').data.source == 'cifar_dir'

"""Test-only trainer variants that train with torch.compile on, as nnU-Net does on a GPU (``_tinycompiled``).

nnU-Net compiles only on CUDA (``_do_i_compile`` is False on the CPU); these variants return True, so
``nnUNetv2_train`` runs nnU-Net's own ``torch.compile(self.network)`` and ``--val`` / ``nnUNetv2_predict``
(with ``nnUNet_compile=true``) compile for inference. The compile backend comes from
``NNUNET_COVID_TEST_COMPILE_BACKEND`` (default ``aot_eager``): inductor's C++ code generation on a
2-core CPU takes about 40 s per graph; ``aot_eager`` runs the same TorchDynamo tracing and AOT autograd,
where wrapper prefixes, graph breaks, frozen parameters and ``no_grad`` regions show.
``benchmarks/gpu_check.py`` compiles with inductor on a GPU.

The folder is added to ``nnUNet_extTrainer`` next to the package's own shim folder by the tests.
"""
import functools
import os

import torch

import nnunet_covid.training as ours

if not getattr(torch.compile, "_test_backend", None):
    _backend = os.environ.get("NNUNET_COVID_TEST_COMPILE_BACKEND", "aot_eager")
    torch.compile = functools.partial(torch.compile, backend=_backend)
    torch.compile._test_backend = _backend


class CompiledForTests:
    """Compile as on a GPU, whatever the device."""

    def _do_i_compile(self):
        return True


class nnUNetTrainer_tinycompiled(CompiledForTests, ours.nnUNetTrainer_tiny):
    pass


class MultiLesionPretrainTrainer_tinycompiled(CompiledForTests, ours.MultiLesionPretrainTrainer_tiny):
    pass


class MultiLesionPartialLabelTrainer_tinycompiled(CompiledForTests, ours.MultiLesionPartialLabelTrainer_tiny):
    pass


class ContinualLearningTrainer_tinycompiled(CompiledForTests, ours.ContinualLearningTrainer_tiny):
    pass


class BodyFineTuneTrainer_tinycompiled(CompiledForTests, ours.BodyFineTuneTrainer_tiny):
    pass


class FrozenEncoderTrainer_tinycompiled(CompiledForTests, ours.FrozenEncoderTrainer_tiny):
    pass


class HybridEncoderTrainer_tinycompiled(CompiledForTests, ours.HybridEncoderTrainer_tiny):
    pass


class NCoVSegNetTrainerSmall_tinycompiled(CompiledForTests, ours.NCoVSegNetTrainerSmall_tiny):
    pass

"""The option groups of ``run``: each module adds its flags and applies them to a
``WasiConfig`` through library constructors. Add a concern as a module here, not in the
library."""

from __future__ import annotations

import argparse
from typing import Callable

from ..wasi.context import WasiConfig
from . import options_filesystem, options_identities, options_limits, options_network, options_tls, options_tls_limits

OptionGroup = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, WasiConfig], None]]

OPTION_GROUPS: list[OptionGroup] = [
    (options_filesystem.add_arguments, options_filesystem.apply),
    (options_network.add_arguments, options_network.apply),
    (options_tls.add_arguments, options_tls.apply),
    (options_identities.add_arguments, options_identities.apply),
    (options_tls_limits.add_arguments, options_tls_limits.apply),
    (options_limits.add_arguments, options_limits.apply),
]

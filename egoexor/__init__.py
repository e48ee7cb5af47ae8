"""egoexor: a clean reimplementation of the EgoExOR dual-branch scene-graph-generation baseline."""

import logging

from egoexor import held_messages

__version__ = "0.1.0"

# A command holds library messages from its first import on (egoexor.held_messages).
held_messages.hold_if_command()

# On CPUs with AVX512-BF16, importing bitsandbytes (through peft) logs that an optional hub kernel
# package is missing; it falls back to its own kernel. The line says nothing a user can act on, in any
# run, so only its errors are let through. (Other library messages are held back, not silenced, while a
# command checks its inputs.)
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

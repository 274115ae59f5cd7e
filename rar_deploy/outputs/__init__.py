"""Outputs that never lose data.

Every output is written under a temporary name beside its target and swapped in complete. An existing
target is replaced only with `--force`, only when rar-deploy wrote it (`Output.written` recognises it and
lists the files it wrote there), and never when it holds anything else: a file a user added to an earlier
output is named and the command refuses. An output never is, contains or lies inside one of the command's
inputs. A path given through a symbolic link (or as `.`) names its target: the target is replaced, the link
is kept. A lock beside the target makes a second writer fail at once; leftovers of a killed run are removed
(or an interrupted replacement restored) by the next run for the same target. A directory or file replaces
another by an atomic exchange (Linux renameat2), so the target is always a complete old or a complete new
output. The outputs of one run are published together or not at all (`atomic_outputs`).
"""

from rar_deploy.outputs.publish import atomic_directory, atomic_file, atomic_outputs
from rar_deploy.outputs.target import Output, any_file, never, write_error

__all__ = ["Output", "any_file", "atomic_directory", "atomic_file", "atomic_outputs", "never", "write_error"]

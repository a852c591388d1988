"""Suite-wide: the signal state of a terminal's foreground process, whoever started the suite."""

from __future__ import annotations

import signal

# A suite started in the background from a script (`bash .ci/run &`, a CI runner without job control)
# inherits SIGINT ignored, and so does every `lab` process a test starts: Python then installs no
# KeyboardInterrupt handler, and the Ctrl-C tests would hang on the shell's setting, not on the lab.
# Restore what a user's terminal gives a foreground `lab render`.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

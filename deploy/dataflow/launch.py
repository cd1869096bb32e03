"""Flex-template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): `seqcodec encode` with template parameters.

Dataflow passes each template parameter as ``--name=value``; metadata.json names them the Beam way
(``model_dir``), so the job's own dashed options (``--model-dir``) are matched in both spellings.
Beam's options (``--temp_location``, ...) pass through unchanged.

The launcher submits the job and returns (``--no-wait`` is added): a flex-template launcher must not
wait for the job. Nothing is lost by that: the job's own last stage counts the rows, applies the
error-rate gate and commits the partition (``OUTPUT/dt=RUN_DATE``), and writes its decision to the
run's ``summary.json``. Image and gcloud commands: deploy/dataflow/Dockerfile, deploy/README.md (Dataflow).
"""

from __future__ import annotations

import sys


def seqcodec_argv(argv: list[str]) -> list[str]:
    """``argv`` with ``--snake_case`` spellings of seqcodec's own options turned into their ``--dashed`` names,
    plus ``--no-wait``."""
    from seqcodec.pipeline.encode import parser

    ours = {opt for action in parser()._actions for opt in action.option_strings if opt.startswith("--")}
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        dashed = name.replace("_", "-")
        if name.startswith("--") and name not in ours and dashed in ours:
            arg = dashed + sep + value
        out.append(arg)
    # Google's flex-template launcher must not block until the job ends; the job commits by itself.
    if "--no-wait" not in out:
        out.append("--no-wait")
    return out


if __name__ == "__main__":
    from seqcodec.pipeline.encode import main
    from seqcodec.pipeline.runtime import run_cli

    sys.exit(run_cli(main, seqcodec_argv(sys.argv[1:])))

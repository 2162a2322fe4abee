"""What every ``servomex`` subcommand shares (docs/cli.md): one import for the cli modules.

The shared parts live by concern; this module re-exports them under their old names:

* :mod:`.args` — the shared options (:func:`add_device_options`, :func:`add_format_option`,
  :func:`add_verbose_option`) and argparse types (:func:`positive_float`, :func:`count`, …);
* :mod:`.running` — how a command ends (:func:`run_async`, :func:`report_failure`): one
  ``error: …`` line and exit 1 for a ServomexError or OSError, never a traceback; quiet exit 0
  for a closed stdout; the subcommand's code on Ctrl-C;
* :mod:`.opening` — :func:`open_analyzer` (a port, ``sim://``, ``tcp://`` or a replayed
  ``--fixture`` capture) and the label/address of an open analyser;
* :mod:`.output` — the read-format lines and the JSON Lines documents.
"""

from __future__ import annotations

from .args import (
    PROTOCOL_CHOICES,
    add_device_options,
    add_format_option,
    add_verbose_option,
    count,
    non_negative_float,
    positive_float,
)
from .opening import (
    FIXTURE_INTERVAL_S,
    analyzer_address,
    load_fixture,
    open_analyzer,
    replay,
    require_port,
    serial_settings_for,
    transport_label,
)
from .output import (
    emit_json,
    format_device_line,
    format_frame_line,
    format_reading_line,
    format_sample_line,
    frame_json,
    info_json,
    read_block,
    reading_ok,
    reading_value_text,
    sample_json,
    value_state,
    value_text,
)
from .running import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    cli_wording,
    connection_lost,
    context_words,
    describe_error,
    first_leaf,
    is_broken_pipe,
    report_failure,
    run_async,
    silence_stdout,
    verbose_of,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "FIXTURE_INTERVAL_S",
    "PROTOCOL_CHOICES",
    "add_device_options",
    "add_format_option",
    "add_verbose_option",
    "analyzer_address",
    "cli_wording",
    "connection_lost",
    "context_words",
    "count",
    "describe_error",
    "emit_json",
    "first_leaf",
    "format_device_line",
    "format_frame_line",
    "format_reading_line",
    "format_sample_line",
    "frame_json",
    "info_json",
    "is_broken_pipe",
    "load_fixture",
    "non_negative_float",
    "open_analyzer",
    "positive_float",
    "read_block",
    "reading_ok",
    "reading_value_text",
    "replay",
    "report_failure",
    "require_port",
    "run_async",
    "sample_json",
    "serial_settings_for",
    "silence_stdout",
    "transport_label",
    "value_state",
    "value_text",
    "verbose_of",
]

"""One family of errors: every failure Accordion expects is an AccordionError, caught once, in the CLI."""

from __future__ import annotations


class AccordionError(Exception):
    """A failure to report in one line (no traceback)."""


class ConfigError(AccordionError):
    """The cluster file or an option is invalid."""


class ProviderError(AccordionError):
    """A provider could not create, list or delete nodes."""


class SchedulerError(AccordionError):
    """A scheduler could not be set up or observed, or refused a command."""


class ClusterError(AccordionError):
    """A cluster-level operation (up, down, load) failed."""

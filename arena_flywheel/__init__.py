"""arena-flywheel: Arena Learning / WizardArena as an event stream."""
__version__ = "0.1.0"

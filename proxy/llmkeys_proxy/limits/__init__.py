"""Limiter backends behind one interface (`base.Limiter`): Redis for fleets, in-process for standalone."""

"""The service analytics: the measures a city auditor computes from the feed (see :mod:`citibikes.analytics.measures`)."""

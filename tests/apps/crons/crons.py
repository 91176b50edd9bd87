from engine import cron_jobs
from .ticks import tick

crons = cron_jobs()
crons.interval("every second", {"seconds": 1}, tick, {"source": "interval"})
crons.daily("nightly", {"hour_utc": 3, "minute_utc": 0}, "ticks:tick", {"source": "daily"})

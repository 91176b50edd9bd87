from engine import cron_jobs

crons = cron_jobs()
crons.daily("purge spam", {"hour_utc": 3, "minute_utc": 30}, "messages:purge_author", {"author": "spam"})

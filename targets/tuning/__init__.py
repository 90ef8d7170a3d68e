"""MetaSchedule tuning: tasks and the tuner, the database on disk, cold-weight measurement."""

-- pg-coordinator schema, version 3: reserved for the shared timetable of
-- leader-only jobs, which is written beside this file; it changes nothing.
SELECT 1;

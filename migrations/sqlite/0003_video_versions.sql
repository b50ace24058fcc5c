-- video-change (seed 004): the last version given to each video of an account. It is
-- written in the same transaction as the event that changed the video and the
-- video-change that reports it, so versions never repeat, skip or go back, across
-- restarts too. A deleted video keeps its row: changes after deletion go on counting.
CREATE TABLE video_versions (
    account TEXT    NOT NULL,
    video   TEXT    NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (account, video)
) WITHOUT ROWID;

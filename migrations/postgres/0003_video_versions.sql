-- video-change (seed 004): the last version given to each video of an account, written
-- in the same transaction as the event that changed the video and the video-change that
-- reports it (see migrations/sqlite/0003_video_versions.sql).
CREATE TABLE video_versions (
    account TEXT   NOT NULL,
    video   TEXT   NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (account, video)
);

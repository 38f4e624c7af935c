-- FastIM schema, version 1.
--
-- Distribution (Citus): conversation-scoped tables are distributed by their
-- conversation id and co-located, so appending a message (conversations, messages,
-- members) touches one shard:
--   SELECT create_distributed_table('conversations', 'id');
--   SELECT create_distributed_table('messages', 'conversation_id', colocate_with => 'conversations');
--   SELECT create_distributed_table('members', 'conversation_id', colocate_with => 'conversations');
--   SELECT create_distributed_table('cursors', 'user_id');
--   SELECT create_reference_table('users'); SELECT create_reference_table('groups');
--   SELECT create_distributed_table('sessions', 'token_hash');
-- Idempotency keys are scoped to the conversation for the same reason.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_ms    BIGINT NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    device_id  TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);

CREATE TABLE groups (
    id       BIGSERIAL PRIMARY KEY,
    name     TEXT NOT NULL,
    owner_id BIGINT NOT NULL
);

CREATE TABLE conversations (
    id       TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE members (
    conversation_id TEXT NOT NULL,
    user_id         BIGINT NOT NULL,
    read_seq        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id, conversation_id);

-- body: the protobuf Message without its seq (the seq is the column).
CREATE TABLE messages (
    conversation_id TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    id              BIGINT NOT NULL,
    sender_id       BIGINT NOT NULL,
    client_msg_id   TEXT NOT NULL,
    body            BYTEA NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE UNIQUE INDEX messages_dedup ON messages (conversation_id, sender_id, client_msg_id)
    WHERE client_msg_id <> '';

CREATE TABLE cursors (
    user_id         BIGINT NOT NULL,
    device_id       TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, conversation_id)
);

-- Appends one message in one round trip: returns the original on a repeated
-- (conversation, sender, client_msg_id), NULL seq for an unknown conversation.
-- A concurrent duplicate from another logic node waits on the unique index and
-- then returns that node's message.
CREATE FUNCTION fastim_append(p_conv TEXT, p_id BIGINT, p_sender BIGINT, p_cmid TEXT, p_body BYTEA)
RETURNS TABLE (out_seq BIGINT, out_body BYTEA, out_duplicate BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    v_seq BIGINT;
BEGIN
    IF p_cmid <> '' THEN
        RETURN QUERY SELECT m.seq, m.body, TRUE FROM messages m
            WHERE m.conversation_id = p_conv AND m.sender_id = p_sender AND m.client_msg_id = p_cmid;
        IF FOUND THEN RETURN; END IF;
    END IF;
    BEGIN
        UPDATE conversations SET last_seq = last_seq + 1 WHERE id = p_conv RETURNING last_seq INTO v_seq;
        IF NOT FOUND THEN
            RETURN QUERY SELECT NULL::BIGINT, NULL::BYTEA, FALSE;
            RETURN;
        END IF;
        INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, body)
            VALUES (p_conv, v_seq, p_id, p_sender, p_cmid, p_body);
    EXCEPTION WHEN unique_violation THEN
        RETURN QUERY SELECT m.seq, m.body, TRUE FROM messages m
            WHERE m.conversation_id = p_conv AND m.sender_id = p_sender AND m.client_msg_id = p_cmid;
        RETURN;
    END;
    UPDATE members SET read_seq = GREATEST(read_seq, v_seq) WHERE conversation_id = p_conv AND user_id = p_sender;
    RETURN QUERY SELECT v_seq, p_body, FALSE;
END
$$;

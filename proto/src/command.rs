//! The command byte of a frame: one variant per protocol verb.

/// A frame's command. Requests and their responses share the command byte; a
/// response has [`crate::flags::RESPONSE`] set and echoes the request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Command {
    /// `RegisterRequest` -> `RegisterResponse`; allowed before login.
    Register = 1,
    /// `LoginRequest` -> `LoginResponse`; must complete within the auth deadline.
    Login = 2,
    /// `LogoutRequest` -> `LogoutResponse`; revokes the session token.
    Logout = 3,
    /// `Ping` -> `Pong`: heartbeat.
    Ping = 4,
    /// `SendRequest` -> `SendResponse`: the ack, sent once the message is durable.
    Send = 10,
    /// Server -> client `Push`.
    Push = 11,
    /// Client -> server `PushAck` (no response).
    PushAck = 12,
    /// `SyncRequest` -> `SyncResponse`.
    Sync = 13,
    /// `HistoryRequest` -> `HistoryResponse`.
    History = 14,
    /// `MarkReadRequest` -> `MarkReadResponse`.
    MarkRead = 15,
    /// `ConversationsRequest` -> `ConversationsResponse` (with unread counts).
    Conversations = 16,
    /// `GroupCreateRequest` -> `GroupCreateResponse`.
    GroupCreate = 20,
    /// `GroupMembersChange` -> `GroupMembersChangeResponse`.
    GroupAddMembers = 21,
    /// `GroupMembersChange` -> `GroupMembersChangeResponse`.
    GroupRemoveMembers = 22,
    /// `GroupListRequest` -> `GroupListResponse`.
    GroupList = 23,
    /// `GroupMembersRequest` -> `GroupMembersResponse`.
    GroupMembers = 24,
    /// Server -> client `Kick`: the connection is closed with a reason.
    Kick = 30,
    /// Server -> client `Reconnect`: the gateway drains; reconnect elsewhere.
    Reconnect = 31,
    /// Server -> client `Error`; a response when the request id is set.
    Error = 127,
}

impl Command {
    /// Every command, for tables and tests.
    pub const ALL: [Command; 19] = [
        Command::Register,
        Command::Login,
        Command::Logout,
        Command::Ping,
        Command::Send,
        Command::Push,
        Command::PushAck,
        Command::Sync,
        Command::History,
        Command::MarkRead,
        Command::Conversations,
        Command::GroupCreate,
        Command::GroupAddMembers,
        Command::GroupRemoveMembers,
        Command::GroupList,
        Command::GroupMembers,
        Command::Kick,
        Command::Reconnect,
        Command::Error,
    ];

    /// The command for a byte, `None` when the byte is not a command.
    pub fn from_u8(byte: u8) -> Option<Command> {
        Command::ALL.into_iter().find(|c| *c as u8 == byte)
    }

    /// Whether a client may send this command (the others are server -> client only).
    pub fn client_may_send(self) -> bool {
        !matches!(
            self,
            Command::Push | Command::Kick | Command::Reconnect | Command::Error
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        for c in Command::ALL {
            assert_eq!(Command::from_u8(c as u8), Some(c));
        }
        assert_eq!(Command::from_u8(0), None);
        assert_eq!(Command::from_u8(200), None);
    }
}

//! The bot's commands, parsed by teloxide's `BotCommands` (a command addressed to another bot is
//! not ours), after two normalisations Telegram clients do not guarantee: the command's name in
//! any case (`/CLIP`), and its arguments after any whitespace (`/clip\n3`).

use teloxide::utils::command::{BotCommands, ParseError};

#[derive(BotCommands, Debug, Clone, PartialEq, Eq)]
#[command(rename_rule = "lowercase")]
pub enum Command {
    /// What the bot does.
    Start,
    Help,
    /// Clip count, length, cutting mode, language, format, captions.
    Settings,
    /// Your queue.
    Status,
    /// Cancel your jobs.
    Cancel,
    /// In groups: reply to a message with a video or subtitles; options as in /settings.
    Clip(String),
    /// Admins: train a new model on the configured data (`force`: switch to it whatever it
    /// measures).
    Train(String),
    /// Admins: switch back to the model before the last switch.
    Rollback,
    /// Admins: reply to a training file to keep it for the next /train.
    Data,
}

impl Command {
    /// The command in `text` (a message's text or caption), when it is one of ours and addressed
    /// to `me` or to no bot.
    pub fn parse_for(text: &str, me: &str) -> Option<Command> {
        let text = text.trim_start();
        let rest = text.strip_prefix('/')?;
        let (head, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let (name, target) = head.split_once('@').unwrap_or((head, ""));
        let mut normal = format!("/{}", name.to_ascii_lowercase());
        if !target.is_empty() {
            normal.push('@');
            normal.push_str(target);
        }
        let bare = normal.clone();
        let args = args.trim();
        if !args.is_empty() {
            normal.push(' ');
            normal.push_str(args);
        }
        match Command::parse(&normal, me) {
            Ok(c) => Some(c),
            // Words after a command that takes none are ignored (`/cancel all` cancels).
            Err(ParseError::TooManyArguments { .. }) => Command::parse(&bare, me).ok(),
            Err(_) => None,
        }
    }

    /// The name, for messages about it (`/train`).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Help => "help",
            Command::Settings => "settings",
            Command::Status => "status",
            Command::Cancel => "cancel",
            Command::Clip(_) => "clip",
            Command::Train(_) => "train",
            Command::Rollback => "rollback",
            Command::Data => "data",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_addressed_to_us_or_nobody() {
        let p = |t: &str| Command::parse_for(t, "vc_bot");
        assert_eq!(p("/clip 3 30-45"), Some(Command::Clip("3 30-45".into())));
        assert_eq!(p("/clip@vc_bot 3"), Some(Command::Clip("3".into())));
        assert_eq!(p("/CLIP@VC_BOT"), Some(Command::Clip("".into())));
        assert_eq!(p("  /clip\n2 fast"), Some(Command::Clip("2 fast".into())));
        assert_eq!(p("/train force"), Some(Command::Train("force".into())));
        assert_eq!(p("/status"), Some(Command::Status));
        assert_eq!(p("/clip@other_bot 3"), None);
        assert_eq!(p("/unknown"), None);
        assert_eq!(p("hello"), None);
        // Words after a command that takes none are ignored.
        assert_eq!(p("/cancel all"), Some(Command::Cancel));
    }
}

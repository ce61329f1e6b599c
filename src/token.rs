//! `wake token`: new tokens and the SHA-256 hashes the server's `auth:` configuration stores.

use std::io::{Read, Write};

use anyhow::Context;

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a new random token (32 bytes from the kernel's CSPRNG, hex) and its sha256.
    New,
    /// Read a token on standard input and print the sha256 to configure for it.
    Hash,
}

pub fn run(command: &TokenCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        TokenCommand::New => {
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut random| random.read_exact(&mut bytes))
                .context("reading /dev/urandom")?;
            let token = hex::encode(bytes);
            writeln!(out, "token:  {token}")?;
            writeln!(out, "sha256: {}", wake_query::auth::hash_token(&token))?;
        }
        TokenCommand::Hash => {
            let mut token = String::new();
            std::io::stdin().read_to_string(&mut token).context("reading the token from standard input")?;
            anyhow::ensure!(!token.trim().is_empty(), "no token on standard input");
            writeln!(out, "{}", wake_query::auth::hash_token(&token))?;
        }
    }
    Ok(())
}

//! Signal names as runc's `kill` accepts them: `KILL`, `SIGKILL`, `9`, and
//! also 0 (runc's `kill -a ID 0` probes) and the real-time signals
//! (`34`, `RTMIN+2`, `SIGRTMAX-1`), which nix's `Signal` cannot hold: a
//! signal is a raw number here.

use nix::sys::signal::Signal;

use crate::error::{Error, Result};

/// A signal number that `kill(2)` accepts: 0 to SIGRTMAX.
pub fn parse(s: &str) -> Result<i32> {
    let bad = || Error::InvalidSignal {
        signal: s.to_string(),
    };
    let valid = |n: i32| (0..=libc::SIGRTMAX()).contains(&n);
    if let Ok(n) = s.parse::<i32>() {
        return if valid(n) { Ok(n) } else { Err(bad()) };
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let rt = |base: i32, rest: &str| -> Option<i32> {
        if rest.is_empty() {
            return Some(base);
        }
        let (sign, n) = rest.split_at(1);
        let n: i32 = n.parse().ok()?;
        match sign {
            "+" => Some(base + n),
            "-" => Some(base - n),
            _ => None,
        }
    };
    let n = if let Some(rest) = name.strip_prefix("RTMIN") {
        rt(libc::SIGRTMIN(), rest)
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        rt(libc::SIGRTMAX(), rest)
    } else {
        format!("SIG{name}")
            .parse::<Signal>()
            .ok()
            .map(|s| s as i32)
    };
    match n {
        Some(n) if valid(n) && (n == 0 || n < 32 || n >= libc::SIGRTMIN()) => Ok(n),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("KILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse("sigterm").unwrap(), libc::SIGTERM);
        assert_eq!(parse("9").unwrap(), libc::SIGKILL);
        assert_eq!(parse("SIGUSR1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse("0").unwrap(), 0);
        assert!(parse("NOPE").is_err());
        assert!(parse("99").is_err());
    }

    #[test]
    fn real_time_signals() {
        assert_eq!(parse("RTMIN").unwrap(), libc::SIGRTMIN());
        assert_eq!(parse("SIGRTMIN+2").unwrap(), libc::SIGRTMIN() + 2);
        assert_eq!(parse("rtmax-1").unwrap(), libc::SIGRTMAX() - 1);
        assert_eq!(
            parse(&libc::SIGRTMAX().to_string()).unwrap(),
            libc::SIGRTMAX()
        );
        assert!(parse("RTMAX+1").is_err());
        assert!(parse("RTMIN+x").is_err());
    }
}

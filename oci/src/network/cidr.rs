//! An IP address with its prefix length, as `ip addr` writes it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an address/prefix such as 10.0.0.2/24")]
pub struct ParseCidrError {
    pub input: String,
}

impl FromStr for Cidr {
    type Err = ParseCidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseCidrError {
            input: s.to_string(),
        };
        let (a, p) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = a.parse().map_err(|_| err())?;
        let prefix: u8 = p.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = ParseCidrError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// The address alone, as a host route (/32 or /128).
    pub fn host(self) -> Cidr {
        Cidr {
            addr: self.addr,
            prefix: if self.addr.is_ipv4() { 32 } else { 128 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let c: Cidr = "10.99.0.2/24".parse().unwrap();
        assert_eq!(c.prefix, 24);
        assert_eq!(c.to_string(), "10.99.0.2/24");
        assert_eq!(c.host().to_string(), "10.99.0.2/32");
        let v6: Cidr = "fd00::2/64".parse().unwrap();
        assert_eq!(v6.host().prefix, 128);
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "x/24",
            "fd00::1/129",
            "10.0.0.1/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}

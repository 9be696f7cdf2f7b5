//! The set of address ranges of one process whose pages are still on the
//! source host, as CRIU's lazy-pages daemon keeps it (criu/uffd.c: `struct
//! lazy_iov`, `drop_iovs`, `remap_iovs`): each range knows where it is now
//! (`start..end`, which moves with `mremap`) and where it was at dump time
//! (`img_start`, the address the source's page server knows it by).

/// One range of pages not yet copied in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iov {
    pub start: u64,
    pub end: u64,
    pub img_start: u64,
}

impl Iov {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// The dump-time address of run-time address `addr`.
    pub fn img_addr(&self, addr: u64) -> u64 {
        self.img_start + (addr - self.start)
    }
}

/// Ranges sorted by `start`, never overlapping, never empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Iovs {
    v: Vec<Iov>,
}

impl Iovs {
    pub fn new(mut v: Vec<Iov>) -> Iovs {
        v.retain(|i| i.end > i.start);
        v.sort_by_key(|i| i.start);
        Iovs { v }
    }

    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    /// Bytes still missing.
    pub fn bytes(&self) -> u64 {
        self.v.iter().map(Iov::len).sum()
    }

    /// The range holding `addr`.
    pub fn find(&self, addr: u64) -> Option<&Iov> {
        let i = self.v.partition_point(|i| i.end <= addr);
        self.v.get(i).filter(|i| i.start <= addr)
    }

    /// The ranges, lowest first, from run-time address `addr` on (a range
    /// holding `addr` starts there).
    pub fn from(&self, addr: u64) -> impl Iterator<Item = Iov> + '_ {
        let i = self.v.partition_point(|i| i.end <= addr);
        self.v[i..].iter().map(move |i| Iov {
            start: i.start.max(addr),
            end: i.end,
            img_start: i.img_addr(i.start.max(addr)),
        })
    }

    /// Forgets `start..start+len` (copied in, unmapped, or dropped with
    /// MADV_DONTNEED): ranges are cut around it. Only the ranges it meets
    /// are touched (a binary search each side), so that filling a JVM's
    /// thousands of ranges one chunk at a time does not rebuild the whole
    /// set each time.
    pub fn drop_range(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        let lo = self.v.partition_point(|i| i.end <= start);
        let hi = self.v.partition_point(|i| i.start < end);
        if lo >= hi {
            return;
        }
        let (first, last) = (self.v[lo], self.v[hi - 1]);
        let mut keep = Vec::with_capacity(2);
        if first.start < start {
            keep.push(Iov {
                start: first.start,
                end: start,
                img_start: first.img_start,
            });
        }
        if last.end > end {
            keep.push(Iov {
                start: end,
                end: last.end,
                img_start: last.img_addr(end),
            });
        }
        self.v.splice(lo..hi, keep);
    }

    /// `mremap(from, len) -> to`: the pages of `from..from+len` now live at
    /// `to..`; they keep their dump-time addresses.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        let end = from.saturating_add(len);
        let mut moved = Vec::new();
        let mut kept = Vec::with_capacity(self.v.len());
        for i in self.v.drain(..) {
            if i.end <= from || i.start >= end {
                kept.push(i);
                continue;
            }
            let s = i.start.max(from);
            let e = i.end.min(end);
            if i.start < s {
                kept.push(Iov {
                    start: i.start,
                    end: s,
                    img_start: i.img_start,
                });
            }
            moved.push(Iov {
                start: s - from + to,
                end: e - from + to,
                img_start: i.img_addr(s),
            });
            if i.end > e {
                kept.push(Iov {
                    start: e,
                    end: i.end,
                    img_start: i.img_addr(e),
                });
            }
        }
        // The destination was unmapped by the kernel first (an UNMAP event
        // would have told us), so nothing there is lazy any more.
        kept.extend(moved);
        *self = Iovs::new(kept);
    }

    /// Cuts the ranges at every boundary in `bounds` (sorted): a single
    /// UFFDIO_COPY must stay inside one VMA (criu/uffd.c: collect_iovs).
    pub fn split_at(&mut self, bounds: &[u64]) {
        let mut out = Vec::with_capacity(self.v.len());
        for i in self.v.drain(..) {
            let mut s = i.start;
            let lo = bounds.partition_point(|b| *b <= i.start);
            for b in bounds[lo..].iter().take_while(|b| **b < i.end) {
                out.push(Iov {
                    start: s,
                    end: *b,
                    img_start: i.img_addr(s),
                });
                s = *b;
            }
            out.push(Iov {
                start: s,
                end: i.end,
                img_start: i.img_addr(s),
            });
        }
        self.v = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(start: u64, end: u64) -> Iov {
        Iov {
            start,
            end,
            img_start: start,
        }
    }

    #[test]
    fn find_picks_the_holding_range() {
        let s = Iovs::new(vec![iov(0x3000, 0x5000), iov(0x1000, 0x2000)]);
        assert_eq!(s.find(0x1000), Some(&iov(0x1000, 0x2000)));
        assert_eq!(s.find(0x1fff), Some(&iov(0x1000, 0x2000)));
        assert_eq!(s.find(0x2000), None);
        assert_eq!(s.find(0x4000), Some(&iov(0x3000, 0x5000)));
        assert_eq!(s.find(0x5000), None);
        assert_eq!(s.bytes(), 0x3000);
    }

    #[test]
    fn drop_cuts_the_middle_the_edges_and_across_ranges() {
        let mut s = Iovs::new(vec![iov(0x1000, 0x5000), iov(0x6000, 0x8000)]);
        s.drop_range(0x2000, 0x1000);
        assert_eq!(
            s.v,
            vec![
                iov(0x1000, 0x2000),
                iov(0x3000, 0x5000),
                iov(0x6000, 0x8000)
            ]
        );
        s.drop_range(0x4000, 0x3000);
        assert_eq!(
            s.v,
            vec![
                iov(0x1000, 0x2000),
                iov(0x3000, 0x4000),
                iov(0x7000, 0x8000)
            ]
        );
        // In a gap, and exactly one whole range.
        s.drop_range(0x5000, 0x2000);
        s.drop_range(0x3000, 0x1000);
        assert_eq!(s.v, vec![iov(0x1000, 0x2000), iov(0x7000, 0x8000)]);
        s.drop_range(0, u64::MAX);
        assert!(s.is_empty());
    }

    #[test]
    fn from_starts_inside_the_holding_range() {
        let s = Iovs::new(vec![iov(0x1000, 0x3000), iov(0x5000, 0x6000)]);
        let from = |a| s.from(a).collect::<Vec<_>>();
        assert_eq!(from(0), s.v);
        assert_eq!(
            from(0x2000),
            vec![
                Iov {
                    start: 0x2000,
                    end: 0x3000,
                    img_start: 0x2000
                },
                iov(0x5000, 0x6000)
            ]
        );
        assert_eq!(from(0x3000), vec![iov(0x5000, 0x6000)]);
        assert!(from(0x6000).is_empty());
    }

    #[test]
    fn remap_moves_addresses_but_keeps_image_addresses() {
        let mut s = Iovs::new(vec![iov(0x1000, 0x4000)]);
        s.remap(0x2000, 0x10000, 0x1000);
        assert_eq!(
            s.v,
            vec![
                iov(0x1000, 0x2000),
                iov(0x3000, 0x4000),
                Iov {
                    start: 0x10000,
                    end: 0x11000,
                    img_start: 0x2000
                }
            ]
        );
        assert_eq!(s.find(0x10800).unwrap().img_addr(0x10800), 0x2800);
    }

    #[test]
    fn split_at_vma_bounds() {
        let mut s = Iovs::new(vec![iov(0x1000, 0x6000)]);
        s.split_at(&[0x0, 0x2000, 0x4000, 0x9000]);
        assert_eq!(
            s.v,
            vec![
                iov(0x1000, 0x2000),
                iov(0x2000, 0x4000),
                iov(0x4000, 0x6000)
            ]
        );
    }
}

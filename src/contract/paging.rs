//! Page arithmetic: which pages a count of records makes, for the gRPC
//! `pagination` and the Socket.IO `offlineNotifications` alike.

use crate::contract::proto;

/// Where one page sits among all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pagination {
    /// 1-based.
    pub current_page: u32,
    /// `None` on the last page.
    pub next_page: Option<u32>,
    /// `None` on the first page.
    pub prev_page: Option<u32>,
    /// ceil(total_records / limit).
    pub total_pages: i64,
    /// Every record, not only this page.
    pub total_records: i64,
}

impl Pagination {
    /// Pages of `limit` over `total_records`, positioned at `page` (≥ 1).
    pub fn new(page: u32, limit: u32, total_records: i64) -> Pagination {
        let limit = i64::from(limit.max(1));
        let total_records = total_records.max(0);
        let total_pages = (total_records + limit - 1) / limit;
        let next_page = (i64::from(page) < total_pages).then(|| page + 1);
        let prev_page = (page > 1).then(|| page - 1);
        Pagination {
            current_page: page,
            next_page,
            prev_page,
            total_pages,
            total_records,
        }
    }
}

impl From<Pagination> for proto::Pagination {
    fn from(p: Pagination) -> proto::Pagination {
        proto::Pagination {
            current_page: p.current_page as i32,
            next_page: p.next_page.map(|p| p as i32),
            prev_page: p.prev_page.map(|p| p as i32),
            has_next: p.next_page.is_some(),
            has_prev: p.prev_page.is_some(),
            total_pages: p.total_pages,
            total_records: p.total_records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pagination;

    #[test]
    fn pagination_matches_the_contract() {
        let empty = Pagination::new(1, 20, 0);
        assert_eq!(
            (empty.total_pages, empty.next_page, empty.prev_page),
            (0, None, None)
        );
        let middle = Pagination::new(2, 20, 45);
        assert_eq!(middle.total_pages, 3);
        assert_eq!((middle.next_page, middle.prev_page), (Some(3), Some(1)));
        let last = Pagination::new(3, 20, 45);
        assert_eq!((last.next_page, last.prev_page), (None, Some(2)));
        let exact = Pagination::new(1, 20, 20);
        assert_eq!((exact.total_pages, exact.next_page), (1, None));
    }
}

//! The 200s of users served lately, remembered by the user they render.

use std::cell::RefCell;

use bytes::Bytes;
use domain::User;
use poem::http::HeaderMap;
use thread_local::ThreadLocal;

/// A user's body and headers (its type, entity tag and caching), as a
/// `GET /users/{uuid}` answers them. The headers are kept as a whole map: a
/// clone of it costs a fraction of inserting them one by one.
#[derive(Clone)]
pub(super) struct Rendering {
    pub(super) body: Bytes,
    pub(super) headers: HeaderMap,
}

/// The renderings of the users answered lately, each beside the user it
/// was made from. The record cache hands out the same shared user for the
/// same cached bytes (its decode memo), so a hit on a user answered before
/// clones the body and headers instead of writing the JSON, the tag and the
/// headers again: about a third of what a hit cost above the ceiling
/// (docs/PERFORMANCE.md, "Cutting the shared hit path").
///
/// A rendering is reused only for the very user it was made from
/// ([`User::shares_parts_with`]): never for another version, never for an
/// equal user decoded elsewhere. Each slot holds its user, so that user's
/// parts cannot be freed and their address reused while remembered. Direct-
/// mapped by the uuid's low bits (random in a v4 uuid). One set of slots per
/// thread, as the decode memo's (the users it hands out are per thread too):
/// a hit then writes no lock word or reference count that another core's
/// hits write. Memory is bounded by the threads times the slots times a
/// user and its rendering.
pub(super) struct Renderings {
    slots: ThreadLocal<RefCell<Box<[Slot]>>>,
    size: usize,
}

/// One slot: the user last rendered there, and its rendering.
type Slot = Option<(User, Rendering)>;

impl Renderings {
    /// `entries` slots a thread, rounded up to a power of two (at least one).
    pub(super) fn new(entries: usize) -> Self {
        Self {
            slots: ThreadLocal::new(),
            size: entries.max(1).next_power_of_two(),
        }
    }

    /// This thread's slots, and the index of `user`'s.
    fn slot(&self, user: &User) -> (&RefCell<Box<[Slot]>>, usize) {
        let slots = self
            .slots
            .get_or(|| RefCell::new((0..self.size).map(|_| None).collect()));
        // The mask keeps the index in bounds.
        #[allow(clippy::cast_possible_truncation)]
        let index = (user.uuid().get().as_u128() as usize) & (self.size - 1);
        (slots, index)
    }

    /// The rendering of `user`: remembered, or made by `render` and
    /// remembered (replacing whatever shared its slot).
    pub(super) fn of(&self, user: &User, render: impl FnOnce(&User) -> Rendering) -> Rendering {
        let (slots, index) = self.slot(user);
        // Borrowed only here, never across a call out: never twice.
        if let Some((seen, rendering)) = &slots.borrow()[index]
            && seen.shares_parts_with(user)
        {
            return rendering.clone();
        }
        let rendering = render(user);
        let old = slots.borrow_mut()[index].replace((user.clone(), rendering.clone()));
        // Dropped once the slots are no longer borrowed.
        drop(old);
        rendering
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{Email, Name, UserId, UserUuid, Version};

    fn user(n: u128, last: &str) -> User {
        User::new(
            UserId::new(1).unwrap(),
            UserUuid::new(uuid::Uuid::from_u128(n)),
            Name::new("first_name", "Ada").unwrap(),
            Name::new("last_name", last).unwrap(),
            Email::new("ada@example.com").unwrap(),
        )
    }

    fn render(user: &User) -> Rendering {
        let mut headers = HeaderMap::new();
        headers.insert(
            poem::http::header::ETAG,
            poem::http::HeaderValue::from(user.version().get()),
        );
        Rendering {
            body: Bytes::from(user.last_name().as_str().to_owned()),
            headers,
        }
    }

    #[test]
    fn a_user_answered_before_is_not_rendered_again() {
        let renderings = Renderings::new(8);
        let ada = user(1, "Lovelace");
        let first = renderings.of(&ada, render);
        let again = renderings.of(&ada.clone(), |_| panic!("rendered twice"));
        assert_eq!(again.body, first.body);
        assert_eq!(again.body.as_ptr(), first.body.as_ptr(), "not a copy");
    }

    #[test]
    fn an_equal_user_decoded_elsewhere_or_another_version_is_rendered_afresh() {
        let renderings = Renderings::new(8);
        renderings.of(&user(1, "Lovelace"), render);
        let mut rendered = 0;
        let equal_elsewhere = user(1, "Lovelace");
        renderings.of(&equal_elsewhere, |u| {
            rendered += 1;
            render(u)
        });
        let next_version = equal_elsewhere.clone().with_version(Version::new(2));
        let answer = renderings.of(&next_version, |u| {
            rendered += 1;
            render(u)
        });
        assert_eq!(rendered, 2);
        assert_eq!(answer.headers[poem::http::header::ETAG], "2");
    }

    #[test]
    fn users_in_one_slot_replace_each_other() {
        let renderings = Renderings::new(1);
        let (ada, bob) = (user(1, "Lovelace"), user(2, "Bobson"));
        renderings.of(&ada, render);
        assert_eq!(renderings.of(&bob, render).body, "Bobson");
        let mut rendered = false;
        renderings.of(&ada, |u| {
            rendered = true;
            render(u)
        });
        assert!(rendered, "bob took ada's only slot");
    }
}

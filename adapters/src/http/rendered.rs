//! The 200s of users served lately, remembered by the user they render.

use bytes::Bytes;
use domain::User;
use poem::http::HeaderMap;
use ports::MemoTable;

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
/// headers again: 1,800 instructions, about a fifth of what a hit cost
/// above the ceiling (docs/PERFORMANCE.md, "Cutting the hit path again").
///
/// A rendering is reused only for the very user it was made from
/// ([`User::shares_parts_with`]): never for another version, never for an
/// equal user decoded elsewhere. Each entry holds its user, so that user's
/// parts cannot be freed and their address reused while remembered. Found
/// by the uuid's low bits (random in a v4 uuid), in a [`MemoTable`] (per
/// thread, as the decode memo's, whose users it sees).
pub(super) struct Renderings(MemoTable<(User, Rendering)>);

impl Renderings {
    /// About `entries` renderings a thread.
    pub(super) fn new(entries: usize) -> Self {
        Self(MemoTable::new(entries))
    }

    /// The rendering of `user`: remembered, or made by `render` and
    /// remembered.
    pub(super) fn of(&self, user: &User, render: impl FnOnce(&User) -> Rendering) -> Rendering {
        // The low half of the uuid: the table masks it.
        #[allow(clippy::cast_possible_truncation)]
        let hash = user.uuid().get().as_u128() as u64;
        if let Some(rendering) = self.0.find(
            hash,
            |(seen, _)| seen.shares_parts_with(user),
            |(_, rendering)| rendering.clone(),
        ) {
            return rendering;
        }
        let rendering = render(user);
        self.0.remember(hash, (user.clone(), rendering.clone()));
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
    fn a_third_user_of_one_set_replaces_the_least_recently_answered() {
        let renderings = Renderings::new(2);
        let (ada, bob, cy) = (user(1, "Lovelace"), user(2, "Bobson"), user(3, "Cyson"));
        renderings.of(&ada, render);
        renderings.of(&bob, render);
        renderings.of(&ada, |_| panic!("ada and bob share the set"));
        renderings.of(&cy, render);
        renderings.of(&ada, |_| panic!("bob was the least recently answered"));
        let mut rendered = false;
        renderings.of(&bob, |u| {
            rendered = true;
            render(u)
        });
        assert!(rendered, "cy took bob's place");
    }
}

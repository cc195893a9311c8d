//! The endpoints, one file per spec area, each handler named after its operation
//! with `METHOD /path` as its doc header.

pub(crate) mod answer;
pub(crate) mod ranged;

pub(crate) mod client {
    pub(crate) mod account;
    pub(crate) mod account_data;
    pub(crate) mod backup;
    pub(crate) mod device;
    pub(crate) mod directory;
    pub(crate) mod discovery;
    pub(crate) mod ephemeral;
    pub(crate) mod filter;
    pub(crate) mod format;
    pub(crate) mod keys;
    pub(crate) mod media;
    pub(crate) mod membership;
    pub(crate) mod message;
    pub(crate) mod profile;
    pub(crate) mod push;
    pub(crate) mod pushers;
    pub(crate) mod relations;
    pub(crate) mod report;
    pub(crate) mod room;
    pub(crate) mod search;
    pub(crate) mod space;
    pub(crate) mod state;
    pub(crate) mod sync;
    pub(crate) mod to_device;
    pub(crate) mod tokens;
    pub(crate) mod user_directory;
    pub(crate) mod visibility;
}

pub(crate) mod federation {
    pub(crate) mod devices;
    pub(crate) mod directory;
    pub(crate) mod discovery;
    pub(crate) mod event;
    pub(crate) mod keys;
    pub(crate) mod media;
    pub(crate) mod membership;
    pub(crate) mod query;
    pub(crate) mod space;
    pub(crate) mod transactions;
}

/// The metadata (method, path, authentication) of ruma's request `R` for a
/// request type of glia's that wraps it.
macro_rules! metadata_of_inner {
    ($wrapper:ident) => {
        impl<R: ruma::api::Metadata> ruma::api::Metadata for $wrapper<R> {
            const METHOD: http::Method = R::METHOD;
            const RATE_LIMITED: bool = R::RATE_LIMITED;
            type Authentication = R::Authentication;
            type PathBuilder = R::PathBuilder;
            const PATH_BUILDER: Self::PathBuilder = R::PATH_BUILDER;
        }
    };
}

pub(crate) use metadata_of_inner;

/// Every endpoint the node answers: its ruma request type and handler. The
/// router matches each against the request's path (ruma's templates, every
/// version prefix the endpoint ever had, `r0` included) and method.
macro_rules! endpoints {
    ($dispatch:ident) => {{
        use ruma::api::{client as c, federation as f};
        // Unused where the endpoints are only listed (the tests), not dispatched.
        #[allow(unused_imports)]
        use $crate::core::api::{answer, client, federation, ranged};
        $dispatch! {
            c::discovery::get_supported_versions::Request => client::discovery::versions,
            c::discovery::get_capabilities::v3::Request => client::discovery::capabilities,
            c::voip::get_turn_server_info::v3::Request => client::discovery::turn_server,
            c::thirdparty::get_protocols::v3::Request => client::discovery::protocols,
            c::authenticated_media::get_media_config::v1::Request => client::discovery::media_config,
            client::discovery::LegacyMediaConfig => client::discovery::legacy_media_config,
            c::media::create_mxc_uri::v1::Request => client::media::create,
            c::authenticated_media::get_content::v1::Request => client::media::download,
            c::authenticated_media::get_content_as_filename::v1::Request => client::media::download_as,
            c::authenticated_media::get_content_thumbnail::v1::Request => client::media::thumbnail,
            answer::Answered<client::media::Preview> => client::media::preview,
            client::media::LegacyDownload => client::media::legacy_download,
            client::media::LegacyDownloadAs => client::media::legacy_download_as,
            client::media::LegacyThumbnail => client::media::legacy_thumbnail,
            answer::Answered<client::media::LegacyPreview> => client::media::preview,
            c::account::register::v3::Request => client::account::register,
            c::account::get_username_availability::v3::Request => client::account::available,
            c::session::get_login_types::v3::Request => client::account::login_types,
            client::account::Typed<c::session::login::v3::Request> => client::account::login,
            c::session::logout::v3::Request => client::account::logout,
            c::session::logout_all::v3::Request => client::account::logout_all,
            c::account::whoami::v3::Request => client::account::whoami,
            c::account::change_password::v3::Request => client::account::change_password,
            c::account::deactivate::v3::Request => client::account::deactivate,
            c::device::get_devices::v3::Request => client::device::list,
            c::device::get_device::v3::Request => client::device::get,
            c::device::update_device::v3::Request => client::device::update,
            c::device::delete_device::v3::Request => client::device::delete,
            c::device::delete_devices::v3::Request => client::device::delete_many,
            c::profile::get_profile::v3::Request => client::profile::get,
            c::profile::get_display_name::v3::Request => client::profile::get_displayname,
            c::profile::set_display_name::v3::Request => client::profile::set_displayname,
            c::profile::get_avatar_url::v3::Request => client::profile::get_avatar,
            c::profile::set_avatar_url::v3::Request => client::profile::set_avatar,
            c::membership::join_room_by_id::v3::Request => client::membership::join_by_id,
            c::membership::join_room_by_id_or_alias::v3::Request => client::membership::join_by_id_or_alias,
            c::membership::leave_room::v3::Request => client::membership::leave,
            c::membership::forget_room::v3::Request => client::membership::forget,
            c::membership::invite_user::v3::Request => client::membership::invite,
            c::membership::kick_user::v3::Request => client::membership::kick,
            c::membership::ban_user::v3::Request => client::membership::ban,
            c::membership::unban_user::v3::Request => client::membership::unban,
            c::membership::joined_rooms::v3::Request => client::membership::joined,
            c::membership::get_member_events::v3::Request => client::membership::members,
            c::membership::joined_members::v3::Request => client::membership::joined_members,
            c::room::create_room::v3::Request => client::room::create,
            c::room::get_room_event::v3::Request => client::room::event,
            c::room::aliases::v3::Request => client::room::room_aliases,
            c::alias::create_alias::v3::Request => client::room::create_alias,
            c::alias::get_alias::v3::Request => client::room::get_alias,
            c::alias::delete_alias::v3::Request => client::room::delete_alias,
            c::directory::get_room_visibility::v3::Request => client::directory::get_visibility,
            c::directory::set_room_visibility::v3::Request => client::directory::set_visibility,
            c::directory::get_public_rooms::v3::Request => client::directory::public_rooms,
            c::directory::get_public_rooms_filtered::v3::Request => client::directory::public_rooms_filtered,
            c::message::send_message_event::v3::Request => client::message::send,
            c::redact::redact_event::v3::Request => client::message::redact,
            c::message::get_message_events::v3::Request => client::message::messages,
            c::context::get_context::v3::Request => client::message::context,
            c::relations::get_relating_events::v1::Request => client::relations::children,
            c::relations::get_relating_events_with_rel_type::v1::Request => client::relations::children_of_type,
            c::relations::get_relating_events_with_rel_type_and_event_type::v1::Request => client::relations::children_of_types,
            c::threads::get_threads::v1::Request => client::relations::threads,
            c::search::search_events::v3::Request => client::search::search,
            c::user_directory::search_users::v3::Request => client::user_directory::search,
            c::space::get_hierarchy::v1::Request => client::space::hierarchy,
            c::state::send_state_event::v3::Request => client::state::send,
            c::state::get_state_event_for_key::v3::Request => client::state::get,
            c::state::get_state_events::v3::Request => client::state::all,
            c::filter::create_filter::v3::Request => client::filter::create,
            c::filter::get_filter::v3::Request => client::filter::get,
            c::sync::sync_events::v3::Request => client::sync::sync,
            c::keys::upload_keys::v3::Request => client::keys::upload,
            c::keys::get_keys::v3::Request => client::keys::query,
            answer::Answered<c::keys::claim_keys::v3::Request> => client::keys::claim,
            c::keys::get_key_changes::v3::Request => client::keys::changes,
            c::keys::upload_signing_keys::v3::Request => client::keys::upload_signing_keys,
            c::keys::upload_signatures::v3::Request => client::keys::upload_signatures,
            c::to_device::send_event_to_device::v3::Request => client::to_device::send,
            c::backup::create_backup_version::v3::Request => client::backup::create_version,
            c::backup::get_latest_backup_info::v3::Request => client::backup::latest_version,
            c::backup::get_backup_info::v3::Request => client::backup::version,
            c::backup::update_backup_version::v3::Request => client::backup::update_version,
            c::backup::delete_backup_version::v3::Request => client::backup::delete_version,
            c::backup::add_backup_keys::v3::Request => client::backup::put_keys,
            c::backup::add_backup_keys_for_room::v3::Request => client::backup::put_room_keys,
            c::backup::add_backup_keys_for_session::v3::Request => client::backup::put_session_key,
            c::backup::get_backup_keys::v3::Request => client::backup::keys,
            c::backup::get_backup_keys_for_room::v3::Request => client::backup::room_keys,
            c::backup::get_backup_keys_for_session::v3::Request => client::backup::session_key,
            c::backup::delete_backup_keys::v3::Request => client::backup::delete_keys,
            c::backup::delete_backup_keys_for_room::v3::Request => client::backup::delete_room_keys,
            c::backup::delete_backup_keys_for_session::v3::Request => client::backup::delete_session_key,
            c::typing::create_typing_event::v3::Request => client::ephemeral::typing,
            c::receipt::create_receipt::v3::Request => client::ephemeral::receipt,
            c::read_marker::set_read_marker::v3::Request => client::ephemeral::read_markers,
            c::presence::set_presence::v3::Request => client::ephemeral::set_status,
            c::presence::get_presence::v3::Request => client::ephemeral::get_status,
            c::config::set_global_account_data::v3::Request => client::account_data::set_global,
            c::config::get_global_account_data::v3::Request => client::account_data::get_global,
            c::config::set_room_account_data::v3::Request => client::account_data::set_room,
            c::config::get_room_account_data::v3::Request => client::account_data::get_room,
            c::push::get_pushrules_all::v3::Request => client::push::all,
            c::push::get_pushrules_global_scope::v3::Request => client::push::global,
            c::push::get_pushrule::v3::Request => client::push::get,
            c::push::set_pushrule::v3::Request => client::push::set,
            c::push::delete_pushrule::v3::Request => client::push::delete,
            c::push::get_pushrule_enabled::v3::Request => client::push::get_enabled,
            c::push::set_pushrule_enabled::v3::Request => client::push::set_enabled,
            c::push::get_pushrule_actions::v3::Request => client::push::get_actions,
            c::push::set_pushrule_actions::v3::Request => client::push::set_actions,
            c::push::get_pushers::v3::Request => client::pushers::list,
            client::pushers::SetPusher => client::pushers::set,
            c::push::get_notifications::v3::Request => client::pushers::notifications,
            c::room::report_content::v3::Request => client::report::event,
            c::room::report_room::v3::Request => client::report::room,
            c::reporting::report_user::v3::Request => client::report::user,
            f::discovery::get_server_keys::v2::Request => federation::keys::server_keys,
            f::discovery::get_server_version::v1::Request => federation::discovery::version,
            f::transactions::send_transaction_message::v1::Request => federation::transactions::send,
            ranged::Ranged<f::authenticated_media::get_content::v1::Request> => federation::media::download,
            f::authenticated_media::get_content_thumbnail::v1::Request => federation::media::thumbnail,
            f::keys::get_keys::v1::Request => federation::devices::query_keys,
            f::keys::claim_keys::v1::Request => federation::devices::claim_keys,
            f::device::get_devices::v1::Request => federation::devices::user_devices,
            f::membership::prepare_join_event::v1::Request => federation::membership::make_join,
            f::membership::create_join_event::v2::Request => federation::membership::send_join,
            f::membership::prepare_leave_event::v1::Request => federation::membership::make_leave,
            f::membership::create_leave_event::v2::Request => federation::membership::send_leave,
            f::membership::create_invite::v2::Request => federation::membership::invite,
            f::event::get_event::v1::Request => federation::event::get_event,
            f::event::get_room_state_ids::v1::Request => federation::event::state_ids,
            f::event::get_room_state::v1::Request => federation::event::state,
            f::authorization::get_event_authorization::v1::Request => federation::event::event_auth,
            f::backfill::get_backfill::v1::Request => federation::event::backfill,
            f::event::get_missing_events::v1::Request => federation::event::missing_events,
            f::query::get_profile_information::v1::Request => federation::query::profile,
            f::query::get_room_information::v1::Request => federation::query::directory,
            f::directory::get_public_rooms::v1::Request => federation::directory::public_rooms,
            f::directory::get_public_rooms_filtered::v1::Request => federation::directory::public_rooms_filtered,
            f::space::get_hierarchy::v1::Request => federation::space::hierarchy,
        }
    }};
}

/// The endpoints whose handlers take the request's body as it arrives (see
/// [`Body`](crate::core::Body)), parsed from everything else.
macro_rules! streamed_endpoints {
    ($dispatch:ident) => {{
        use ruma::api::client as c;
        #[allow(unused_imports)]
        use $crate::core::api::{answer, client};
        $dispatch! {
            c::media::create_content::v3::Request => client::media::upload,
            answer::Answered<c::media::create_content_async::v3::Request> => client::media::upload_to,
        }
    }};
}

pub(crate) use {endpoints, streamed_endpoints};

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;

//! Image records: the named pointers from a reference to its top-level
//! descriptor, shared by archive import, registry pull and export.

use super::{status_error, ContainerdRuntime, Svc};
use crate::image::Descriptor;
use crate::runtime::RuntimeError;
use crate::spec::normalize_image_ref;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    CreateImageRequest, GetImageRequest, Image, UpdateImageRequest,
};
use containerd_client::types::Descriptor as PbDescriptor;
use tonic::Code;

/// Creates the image record, or points an existing one at `target`
/// (a re-pulled tag, a re-imported archive).
pub(crate) async fn put_image(
    svc: Svc,
    name: &str,
    target: &Descriptor,
) -> Result<(), RuntimeError> {
    let image = Image {
        name: name.to_string(),
        target: Some(PbDescriptor {
            media_type: target.media_type.clone(),
            digest: target.digest.clone(),
            size: target.size,
            annotations: target.annotations.clone().unwrap_or_default(),
        }),
        ..Default::default()
    };
    let mut images = ImagesClient::new(svc);
    let created = images
        .create(CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        })
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => {
            images
                .update(UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".to_string()],
                    }),
                    source_date_epoch: None,
                })
                .await
                .map_err(|s| status_error("update image", s))?;
            Ok(())
        }
        Err(s) => Err(status_error("create image", s)),
    }
}

/// The top-level descriptor an image name points at, if the image exists.
pub(crate) async fn image_target(
    rt: &ContainerdRuntime,
    image: &str,
) -> Result<Option<Descriptor>, RuntimeError> {
    let name = normalize_image_ref(image);
    let record = match ImagesClient::new(rt.svc())
        .get(GetImageRequest { name })
        .await
    {
        Ok(r) => r.into_inner().image,
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => return Err(status_error("get image", s)),
    };
    Ok(record.and_then(|i| i.target).map(|t| Descriptor {
        media_type: t.media_type,
        digest: t.digest,
        size: t.size,
        annotations: None,
        platform: None,
    }))
}

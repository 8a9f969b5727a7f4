// The resources the test API server serves: their types, names, defaults, the little
// validation it does, and the fields that field selectors can use.
//
// The Go types are those of k8s.io/api. Each is registered both as its external version
// (v1) and as the "internal" version the generic API server converts to; since both are the
// same Go type, the conversion is only a change of kind. k8s.io/api has no defaulting or
// validation code (that lives in k8s.io/kubernetes), so the few defaults and checks that
// clients are likely to notice are written out here.
package main

import (
	"fmt"
	"math/rand"
	"net"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/api/validation/path"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// resource describes one served resource.
type resource struct {
	gv         schema.GroupVersion
	plural     string
	singular   string
	namespaced bool
	shortNames []string
	categories []string
	newObj     func() runtime.Object
	newList    func() runtime.Object
	// nameRule checks metadata.name (DNS subdomain, DNS label, ...).
	nameRule validation.ValidateNameFunc
	// hasStatus: the resource has a status subresource; writes to the main resource keep
	// the stored status, writes to /status keep the stored spec.
	hasStatus bool
	// tracksGeneration: metadata.generation starts at 1 and grows with each spec change.
	tracksGeneration bool
	// allowCreateOnUpdate: a PUT of a missing object creates it (as kube-apiserver does
	// for these resources).
	allowCreateOnUpdate bool
	// defaults fills defaults on create (old == nil) and update.
	defaults func(obj, old runtime.Object)
	// validate checks the object beyond its metadata; old == nil on create.
	validate func(obj, old runtime.Object) field.ErrorList
	// fields returns the selectable fields beyond metadata.name and metadata.namespace.
	fields func(obj runtime.Object) fields.Set
}

var (
	// scheme knows every served type as external and internal version.
	scheme = runtime.NewScheme()
	// codecs serializes scheme's types (JSON, YAML, protobuf).
	codecs = serializer.NewCodecFactory(scheme)
	// externalScheme knows only the external versions; OpenAPI definitions are named from it,
	// so each definition carries exactly the group/version/kind clients send.
	externalScheme = runtime.NewScheme()
)

// The API group versions served, in the order discovery lists them.
var (
	coreV1         = corev1.SchemeGroupVersion
	discoveryV1    = discoveryv1.SchemeGroupVersion
	coordinationV1 = coordinationv1.SchemeGroupVersion
	eventsV1       = eventsv1.SchemeGroupVersion
	rbacV1         = rbacv1.SchemeGroupVersion
	appsV1         = appsv1.SchemeGroupVersion
)

// resources is everything served.
var resources = []*resource{
	{gv: coreV1, plural: "namespaces", singular: "namespace", shortNames: []string{"ns"},
		newObj:  func() runtime.Object { return &corev1.Namespace{} },
		newList: func() runtime.Object { return &corev1.NamespaceList{} },
		// Namespace names are DNS labels.
		nameRule: validation.ValidateNamespaceName, hasStatus: true,
		defaults: func(obj, _ runtime.Object) {
			ns := obj.(*corev1.Namespace)
			if ns.Status.Phase == "" {
				ns.Status.Phase = corev1.NamespaceActive
			}
		},
		fields: func(obj runtime.Object) fields.Set {
			return fields.Set{"status.phase": string(obj.(*corev1.Namespace).Status.Phase)}
		}},
	{gv: coreV1, plural: "services", singular: "service", namespaced: true,
		shortNames: []string{"svc"}, categories: []string{"all"},
		newObj:  func() runtime.Object { return &corev1.Service{} },
		newList: func() runtime.Object { return &corev1.ServiceList{} },
		// Service names become DNS labels that must start with a letter.
		nameRule: validation.NameIsDNS1035Label, hasStatus: true,
		defaults: defaultService, validate: validateService,
		fields: func(obj runtime.Object) fields.Set {
			s := obj.(*corev1.Service)
			return fields.Set{"spec.clusterIP": s.Spec.ClusterIP, "spec.type": string(s.Spec.Type)}
		}},
	{gv: coreV1, plural: "endpoints", singular: "endpoints", namespaced: true,
		shortNames: []string{"ep"},
		newObj:     func() runtime.Object { return &corev1.Endpoints{} },
		newList:    func() runtime.Object { return &corev1.EndpointsList{} },
		nameRule:   validation.NameIsDNSSubdomain, allowCreateOnUpdate: true,
		defaults: func(obj, _ runtime.Object) {
			for i := range obj.(*corev1.Endpoints).Subsets {
				for j := range obj.(*corev1.Endpoints).Subsets[i].Ports {
					p := &obj.(*corev1.Endpoints).Subsets[i].Ports[j]
					if p.Protocol == "" {
						p.Protocol = corev1.ProtocolTCP
					}
				}
			}
		}},
	{gv: coreV1, plural: "secrets", singular: "secret", namespaced: true,
		newObj:   func() runtime.Object { return &corev1.Secret{} },
		newList:  func() runtime.Object { return &corev1.SecretList{} },
		nameRule: validation.NameIsDNSSubdomain,
		defaults: func(obj, _ runtime.Object) {
			if s := obj.(*corev1.Secret); s.Type == "" {
				s.Type = corev1.SecretTypeOpaque
			}
		},
		fields: func(obj runtime.Object) fields.Set {
			return fields.Set{"type": string(obj.(*corev1.Secret).Type)}
		}},
	{gv: coreV1, plural: "configmaps", singular: "configmap", namespaced: true,
		shortNames: []string{"cm"},
		newObj:     func() runtime.Object { return &corev1.ConfigMap{} },
		newList:    func() runtime.Object { return &corev1.ConfigMapList{} },
		nameRule:   validation.NameIsDNSSubdomain},
	{gv: coreV1, plural: "events", singular: "event", namespaced: true,
		shortNames: []string{"ev"},
		newObj:     func() runtime.Object { return &corev1.Event{} },
		newList:    func() runtime.Object { return &corev1.EventList{} },
		nameRule:   validation.NameIsDNSSubdomain, allowCreateOnUpdate: true,
		fields: func(obj runtime.Object) fields.Set {
			e := obj.(*corev1.Event)
			return fields.Set{
				"involvedObject.kind":            e.InvolvedObject.Kind,
				"involvedObject.namespace":       e.InvolvedObject.Namespace,
				"involvedObject.name":            e.InvolvedObject.Name,
				"involvedObject.uid":             string(e.InvolvedObject.UID),
				"involvedObject.apiVersion":      e.InvolvedObject.APIVersion,
				"involvedObject.resourceVersion": e.InvolvedObject.ResourceVersion,
				"involvedObject.fieldPath":       e.InvolvedObject.FieldPath,
				"reason":                         e.Reason,
				"reportingComponent":             e.ReportingController,
				"source":                         e.Source.Component,
				"type":                           e.Type,
			}
		}},
	{gv: coreV1, plural: "pods", singular: "pod", namespaced: true,
		shortNames: []string{"po"}, categories: []string{"all"},
		newObj:   func() runtime.Object { return &corev1.Pod{} },
		newList:  func() runtime.Object { return &corev1.PodList{} },
		nameRule: validation.NameIsDNSSubdomain, hasStatus: true, tracksGeneration: true,
		defaults: func(obj, old runtime.Object) {
			pod := obj.(*corev1.Pod)
			defaultPodSpec(&pod.Spec)
			if old == nil && pod.Status.Phase == "" {
				pod.Status.Phase = corev1.PodPending
			}
		},
		validate: func(obj, _ runtime.Object) field.ErrorList {
			return validatePodSpec(&obj.(*corev1.Pod).Spec, field.NewPath("spec"))
		},
		fields: func(obj runtime.Object) fields.Set {
			p := obj.(*corev1.Pod)
			return fields.Set{
				"spec.nodeName":            p.Spec.NodeName,
				"spec.restartPolicy":       string(p.Spec.RestartPolicy),
				"spec.schedulerName":       p.Spec.SchedulerName,
				"spec.serviceAccountName":  p.Spec.ServiceAccountName,
				"spec.hostNetwork":         fmt.Sprint(p.Spec.HostNetwork),
				"status.phase":             string(p.Status.Phase),
				"status.podIP":             p.Status.PodIP,
				"status.nominatedNodeName": p.Status.NominatedNodeName,
			}
		}},
	{gv: coreV1, plural: "serviceaccounts", singular: "serviceaccount", namespaced: true,
		shortNames: []string{"sa"},
		newObj:     func() runtime.Object { return &corev1.ServiceAccount{} },
		newList:    func() runtime.Object { return &corev1.ServiceAccountList{} },
		nameRule:   validation.NameIsDNSSubdomain},
	{gv: discoveryV1, plural: "endpointslices", singular: "endpointslice", namespaced: true,
		newObj:   func() runtime.Object { return &discoveryv1.EndpointSlice{} },
		newList:  func() runtime.Object { return &discoveryv1.EndpointSliceList{} },
		nameRule: validation.NameIsDNSSubdomain,
		defaults: func(obj, _ runtime.Object) {
			s := obj.(*discoveryv1.EndpointSlice)
			for i := range s.Ports {
				if s.Ports[i].Protocol == nil {
					tcp := corev1.ProtocolTCP
					s.Ports[i].Protocol = &tcp
				}
				if s.Ports[i].Name == nil {
					empty := ""
					s.Ports[i].Name = &empty
				}
			}
		},
		validate: validateEndpointSlice},
	{gv: coordinationV1, plural: "leases", singular: "lease", namespaced: true,
		newObj:   func() runtime.Object { return &coordinationv1.Lease{} },
		newList:  func() runtime.Object { return &coordinationv1.LeaseList{} },
		nameRule: validation.NameIsDNSSubdomain},
	// kube-runtime's event recorder writes events.k8s.io/v1 Events. Unlike kube-apiserver,
	// they are stored apart from core/v1 Events.
	{gv: eventsV1, plural: "events", singular: "event", namespaced: true,
		newObj:   func() runtime.Object { return &eventsv1.Event{} },
		newList:  func() runtime.Object { return &eventsv1.EventList{} },
		nameRule: validation.NameIsDNSSubdomain, allowCreateOnUpdate: true},
	{gv: rbacV1, plural: "roles", singular: "role", namespaced: true,
		newObj:   func() runtime.Object { return &rbacv1.Role{} },
		newList:  func() runtime.Object { return &rbacv1.RoleList{} },
		nameRule: path.ValidatePathSegmentName},
	{gv: rbacV1, plural: "rolebindings", singular: "rolebinding", namespaced: true,
		newObj:   func() runtime.Object { return &rbacv1.RoleBinding{} },
		newList:  func() runtime.Object { return &rbacv1.RoleBindingList{} },
		nameRule: path.ValidatePathSegmentName},
	{gv: rbacV1, plural: "clusterroles", singular: "clusterrole",
		newObj:   func() runtime.Object { return &rbacv1.ClusterRole{} },
		newList:  func() runtime.Object { return &rbacv1.ClusterRoleList{} },
		nameRule: path.ValidatePathSegmentName},
	{gv: rbacV1, plural: "clusterrolebindings", singular: "clusterrolebinding",
		newObj:   func() runtime.Object { return &rbacv1.ClusterRoleBinding{} },
		newList:  func() runtime.Object { return &rbacv1.ClusterRoleBindingList{} },
		nameRule: path.ValidatePathSegmentName},
	{gv: appsV1, plural: "deployments", singular: "deployment", namespaced: true,
		shortNames: []string{"deploy"}, categories: []string{"all"},
		newObj:   func() runtime.Object { return &appsv1.Deployment{} },
		newList:  func() runtime.Object { return &appsv1.DeploymentList{} },
		nameRule: validation.NameIsDNSSubdomain, hasStatus: true, tracksGeneration: true,
		defaults: defaultDeployment, validate: validateDeployment},
}

// registerTypes adds every served type to scheme (external and internal version) and to
// externalScheme, and teaches scheme which fields each kind can be selected by.
func registerTypes() error {
	for _, s := range []*runtime.Scheme{scheme, externalScheme} {
		for _, add := range []func(*runtime.Scheme) error{
			corev1.AddToScheme, discoveryv1.AddToScheme, coordinationv1.AddToScheme,
			eventsv1.AddToScheme, rbacv1.AddToScheme, appsv1.AddToScheme,
		} {
			if err := add(s); err != nil {
				return err
			}
		}
	}
	for _, r := range resources {
		internal := schema.GroupVersion{Group: r.gv.Group, Version: runtime.APIVersionInternal}
		scheme.AddKnownTypes(internal, r.newObj(), r.newList())
		if err := registerFieldLabels(r); err != nil {
			return err
		}
	}
	// The options and status types of the API machinery, as kube-apiserver registers them.
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	unversioned := schema.GroupVersion{Group: "", Version: "v1"}
	scheme.AddUnversionedTypes(unversioned,
		&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{},
		&metav1.APIGroup{}, &metav1.APIResourceList{})
	return nil
}

// registerFieldLabels accepts, in field selectors for r's kind, metadata.name,
// metadata.namespace and r's own selectable fields; anything else is refused with "field
// label not supported", as kube-apiserver does.
func registerFieldLabels(r *resource) error {
	allowed := map[string]bool{"metadata.name": true, "metadata.namespace": true}
	if r.fields != nil {
		for k := range r.fields(r.newObj()) {
			allowed[k] = true
		}
	}
	gvk, err := externalKind(r.newObj())
	if err != nil {
		return err
	}
	return scheme.AddFieldLabelConversionFunc(gvk, func(label, value string) (string, string, error) {
		if allowed[label] {
			return label, value, nil
		}
		return "", "", fmt.Errorf("field label not supported: %s", label)
	})
}

// externalKind is the served group/version/kind of obj's type.
func externalKind(obj runtime.Object) (schema.GroupVersionKind, error) {
	gvks, _, err := externalScheme.ObjectKinds(obj)
	if err != nil {
		return schema.GroupVersionKind{}, err
	}
	return gvks[0], nil
}

// selectableFields is the storage attribute function of r: labels and selectable fields.
func (r *resource) selectableFields(obj runtime.Object) (labels.Set, fields.Set, error) {
	m, err := metaOf(obj)
	if err != nil {
		return nil, nil, err
	}
	set := fields.Set{"metadata.name": m.GetName()}
	if r.namespaced {
		set["metadata.namespace"] = m.GetNamespace()
	}
	if r.fields != nil {
		for k, v := range r.fields(obj) {
			set[k] = v
		}
	}
	return labels.Set(m.GetLabels()), set, nil
}

// ---- services ------------------------------------------------------------------------------

// The service CIDR naive cluster IPs come from (kube-apiserver's default).
var serviceCIDR = mustParseCIDR("10.96.0.0/12")

func mustParseCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

// defaultService fills the defaults kube-apiserver fills, keeps the allocated cluster IP
// and node ports on update, and allocates naive ones (random, not checked for collisions).
func defaultService(obj, old runtime.Object) {
	svc := obj.(*corev1.Service)
	spec := &svc.Spec
	if spec.Type == "" {
		spec.Type = corev1.ServiceTypeClusterIP
	}
	if spec.SessionAffinity == "" {
		spec.SessionAffinity = corev1.ServiceAffinityNone
	}
	for i := range spec.Ports {
		p := &spec.Ports[i]
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		if p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal == 0 {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
	}
	if spec.Type == corev1.ServiceTypeExternalName {
		return
	}
	if spec.InternalTrafficPolicy == nil {
		cluster := corev1.ServiceInternalTrafficPolicyCluster
		spec.InternalTrafficPolicy = &cluster
	}
	// An update that does not mention the allocated values keeps them.
	if old != nil {
		prev := old.(*corev1.Service).Spec
		if spec.ClusterIP == "" && len(spec.ClusterIPs) == 0 {
			spec.ClusterIP, spec.ClusterIPs = prev.ClusterIP, prev.ClusterIPs
		}
		if len(spec.IPFamilies) == 0 {
			spec.IPFamilies = prev.IPFamilies
		}
		if spec.IPFamilyPolicy == nil {
			spec.IPFamilyPolicy = prev.IPFamilyPolicy
		}
		for i := range spec.Ports {
			for _, pp := range prev.Ports {
				if spec.Ports[i].NodePort == 0 && pp.Port == spec.Ports[i].Port && pp.Protocol == spec.Ports[i].Protocol {
					spec.Ports[i].NodePort = pp.NodePort
				}
			}
		}
	}
	if spec.ClusterIP == "" && len(spec.ClusterIPs) > 0 {
		spec.ClusterIP = spec.ClusterIPs[0]
	}
	if spec.ClusterIP == "" {
		spec.ClusterIP = randomServiceIP()
	}
	if len(spec.ClusterIPs) == 0 {
		spec.ClusterIPs = []string{spec.ClusterIP}
	}
	if len(spec.IPFamilies) == 0 {
		spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
	}
	if spec.IPFamilyPolicy == nil {
		single := corev1.IPFamilyPolicySingleStack
		spec.IPFamilyPolicy = &single
	}
	if spec.Type == corev1.ServiceTypeNodePort || spec.Type == corev1.ServiceTypeLoadBalancer {
		if spec.ExternalTrafficPolicy == "" {
			spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		}
		if spec.Type == corev1.ServiceTypeLoadBalancer && spec.AllocateLoadBalancerNodePorts == nil {
			yes := true
			spec.AllocateLoadBalancerNodePorts = &yes
		}
		for i := range spec.Ports {
			if spec.Ports[i].NodePort == 0 {
				spec.Ports[i].NodePort = int32(30000 + rand.Intn(2768))
			}
		}
	}
}

// randomServiceIP picks an address in serviceCIDR, avoiding the network address and the
// first address (kube-apiserver gives that to the "kubernetes" Service).
func randomServiceIP() string {
	ones, bits := serviceCIDR.Mask.Size()
	size := 1 << (bits - ones)
	offset := 2 + rand.Intn(size-3)
	ip := serviceCIDR.IP.To4()
	n := uint32(ip[0])<<24 | uint32(ip[1])<<16 | uint32(ip[2])<<8 | uint32(ip[3])
	n += uint32(offset)
	return net.IPv4(byte(n>>24), byte(n>>16), byte(n>>8), byte(n)).String()
}

// validateService checks what a client is most likely to get wrong: ports, and the cluster
// IP that cannot change.
func validateService(obj, old runtime.Object) field.ErrorList {
	var errs field.ErrorList
	spec := obj.(*corev1.Service).Spec
	specPath := field.NewPath("spec")
	headless := spec.ClusterIP == corev1.ClusterIPNone
	if len(spec.Ports) == 0 && !headless && spec.Type != corev1.ServiceTypeExternalName {
		errs = append(errs, field.Required(specPath.Child("ports"), ""))
	}
	for i, p := range spec.Ports {
		if p.Port < 1 || p.Port > 65535 {
			errs = append(errs, field.Invalid(specPath.Child("ports").Index(i).Child("port"), p.Port, "must be between 1 and 65535, inclusive"))
		}
		if len(spec.Ports) > 1 && p.Name == "" {
			errs = append(errs, field.Required(specPath.Child("ports").Index(i).Child("name"), "when there is more than one port"))
		}
	}
	if old != nil {
		prev := old.(*corev1.Service).Spec
		if prev.ClusterIP != "" && spec.ClusterIP != prev.ClusterIP && spec.Type != corev1.ServiceTypeExternalName {
			errs = append(errs, field.Invalid(specPath.Child("clusterIP"), spec.ClusterIP, "field is immutable"))
		}
	}
	return errs
}

// ---- pods and deployments -----------------------------------------------------------------

// defaultPodSpec fills the pod spec defaults kube-apiserver fills most visibly.
func defaultPodSpec(spec *corev1.PodSpec) {
	if spec.RestartPolicy == "" {
		spec.RestartPolicy = corev1.RestartPolicyAlways
	}
	if spec.DNSPolicy == "" {
		spec.DNSPolicy = corev1.DNSClusterFirst
	}
	if spec.SchedulerName == "" {
		spec.SchedulerName = corev1.DefaultSchedulerName
	}
	if spec.TerminationGracePeriodSeconds == nil {
		thirty := int64(corev1.DefaultTerminationGracePeriodSeconds)
		spec.TerminationGracePeriodSeconds = &thirty
	}
	if spec.SecurityContext == nil {
		spec.SecurityContext = &corev1.PodSecurityContext{}
	}
	for _, containers := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for i := range containers {
			c := &containers[i]
			if c.TerminationMessagePath == "" {
				c.TerminationMessagePath = corev1.TerminationMessagePathDefault
			}
			if c.TerminationMessagePolicy == "" {
				c.TerminationMessagePolicy = corev1.TerminationMessageReadFile
			}
			if c.ImagePullPolicy == "" {
				c.ImagePullPolicy = defaultPullPolicy(c.Image)
			}
			for j := range c.Ports {
				if c.Ports[j].Protocol == "" {
					c.Ports[j].Protocol = corev1.ProtocolTCP
				}
			}
		}
	}
}

// defaultPullPolicy: Always for ":latest" or untagged images, IfNotPresent otherwise.
func defaultPullPolicy(image string) corev1.PullPolicy {
	name := image
	if i := strings.Index(name, "@"); i >= 0 {
		return corev1.PullIfNotPresent
	}
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	if i := strings.LastIndex(name, ":"); i < 0 || name[i+1:] == "latest" {
		return corev1.PullAlways
	}
	return corev1.PullIfNotPresent
}

// validatePodSpec: at least one container, each with a name and an image.
func validatePodSpec(spec *corev1.PodSpec, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(spec.Containers) == 0 {
		errs = append(errs, field.Required(p.Child("containers"), ""))
	}
	for i, c := range spec.Containers {
		if c.Name == "" {
			errs = append(errs, field.Required(p.Child("containers").Index(i).Child("name"), ""))
		}
		if c.Image == "" {
			errs = append(errs, field.Required(p.Child("containers").Index(i).Child("image"), ""))
		}
	}
	return errs
}

// defaultDeployment fills the apps/v1 Deployment defaults.
func defaultDeployment(obj, _ runtime.Object) {
	spec := &obj.(*appsv1.Deployment).Spec
	if spec.Replicas == nil {
		one := int32(1)
		spec.Replicas = &one
	}
	if spec.Strategy.Type == "" {
		spec.Strategy.Type = appsv1.RollingUpdateDeploymentStrategyType
	}
	if spec.Strategy.Type == appsv1.RollingUpdateDeploymentStrategyType {
		if spec.Strategy.RollingUpdate == nil {
			spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{}
		}
		quarter := intstr.FromString("25%")
		if spec.Strategy.RollingUpdate.MaxUnavailable == nil {
			spec.Strategy.RollingUpdate.MaxUnavailable = &quarter
		}
		if spec.Strategy.RollingUpdate.MaxSurge == nil {
			spec.Strategy.RollingUpdate.MaxSurge = &quarter
		}
	}
	if spec.RevisionHistoryLimit == nil {
		ten := int32(10)
		spec.RevisionHistoryLimit = &ten
	}
	if spec.ProgressDeadlineSeconds == nil {
		six := int32(600)
		spec.ProgressDeadlineSeconds = &six
	}
	defaultPodSpec(&spec.Template.Spec)
}

// validateDeployment: a selector that matches the pod template's labels, and a valid pod spec.
func validateDeployment(obj, _ runtime.Object) field.ErrorList {
	var errs field.ErrorList
	spec := obj.(*appsv1.Deployment).Spec
	p := field.NewPath("spec")
	if spec.Selector == nil {
		errs = append(errs, field.Required(p.Child("selector"), ""))
	} else if sel, err := metav1.LabelSelectorAsSelector(spec.Selector); err != nil {
		errs = append(errs, field.Invalid(p.Child("selector"), spec.Selector, err.Error()))
	} else if sel.Empty() {
		errs = append(errs, field.Invalid(p.Child("selector"), spec.Selector, "empty selector is invalid for deployment"))
	} else if !sel.Matches(labels.Set(spec.Template.Labels)) {
		errs = append(errs, field.Invalid(p.Child("template", "metadata", "labels"), spec.Template.Labels, "`selector` does not match template `labels`"))
	}
	if spec.Replicas != nil && *spec.Replicas < 0 {
		errs = append(errs, field.Invalid(p.Child("replicas"), *spec.Replicas, "must be greater than or equal to 0"))
	}
	return append(errs, validatePodSpec(&spec.Template.Spec, p.Child("template", "spec"))...)
}

// ---- endpoint slices ---------------------------------------------------------------------

// validateEndpointSlice: a known address type that does not change.
func validateEndpointSlice(obj, old runtime.Object) field.ErrorList {
	s := obj.(*discoveryv1.EndpointSlice)
	p := field.NewPath("addressType")
	switch s.AddressType {
	case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
	case "":
		return field.ErrorList{field.Required(p, "")}
	default:
		return field.ErrorList{field.NotSupported(p, s.AddressType, []string{"IPv4", "IPv6", "FQDN"})}
	}
	if old != nil && old.(*discoveryv1.EndpointSlice).AddressType != s.AddressType {
		return field.ErrorList{field.Invalid(p, s.AddressType, "field is immutable")}
	}
	return nil
}
